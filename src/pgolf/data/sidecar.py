"""Per-token byte sidecars: the original-text bytes behind each validation token.

A sidecar sits beside each validation shard (fineweb_val_000003.bin ->
fineweb_val_bytes_000003.bin, the #1855 record's naming and layout): the official shard
format with one uint16 per token, the UTF-8 bytes of the original text that token stands
for (0 for BOS). With a text transform such as CaseOps the tokenizer's own byte tables
would charge the transformed text; the sidecar charges the original, exactly.

A sidecar decides the score's denominator, so the eval verifies it before use
(verified_validation_bytes): against the manifest beside the shards, and against the bytes
the tokenizer's pieces spell, which differ from the original text's only where the
tokenizer normalized it (NFKC, whitespace runs, unknown characters).
"""

import hashlib
import json
import os
import re

import numpy as np
import torch

from pgolf.data.caseops import CASEOPS_ESC, CASEOPS_SYMBOLS, tokenizer_has_caseops
from pgolf.data.shards import load_shard, read_header, write_shard
from pgolf.data.tokenizer import build_byte_tables
from pgolf.errors import PgolfError

SIDECAR_TAG = "bytes_"
RETOKENIZE_MANIFEST = "retokenize_manifest.json"   # written by `pgolf data retokenize`
# Of the tokens whose bytes the pieces determine (not byte-fallback, not <unk>), the share whose
# sidecar count equals the piece's bytes, and the sidecar's total over the pieces' total on them. On
# the shared CaseOps val set: 99.99 % and 1.00003; a sidecar of all ones, of all threes,
# shifted by one token or permuted agrees on 27 %, 16 %, 19 %, 15 %. The bounds leave room
# for text that normalization changes more (indented code, paragraph breaks, NFKC folding).
SIDECAR_MIN_AGREEMENT = 0.9
SIDECAR_RATIO_BAND = (0.9, 1.2)
_SIDECAR_SHARD_NAME = re.compile(r"^(?P<stem>.*_)(?P<index>\d+)\.bin$")


class SidecarError(PgolfError, ValueError):
    """A byte sidecar that is missing, malformed or does not match its token shard."""


def sidecar_path(shard_path: str) -> str:
    """The sidecar file of a token shard: <prefix>_NNNNNN.bin -> <prefix>_bytes_NNNNNN.bin."""
    folder, name = os.path.split(os.fspath(shard_path))
    m = _SIDECAR_SHARD_NAME.match(name)
    if m is None:
        raise SidecarError(f"shard {shard_path}: name does not end in _<number>.bin, so it has no "
                           "sidecar name; name shards like fineweb_val_000000.bin")
    return os.path.join(folder, f"{m['stem']}{SIDECAR_TAG}{m['index']}.bin")


def is_sidecar(path: str) -> bool:
    """True for a sidecar file name (which a glob like fineweb_val_*.bin also matches)."""
    m = _SIDECAR_SHARD_NAME.match(os.path.basename(os.fspath(path)))
    return m is not None and m["stem"].endswith("_" + SIDECAR_TAG)


def token_shards_only(files: list[str]) -> list[str]:
    """files without the sidecars among them: what a validation glob should read as tokens."""
    return [f for f in files if not is_sidecar(f)]


def write_sidecar(shard_path: str, byte_counts) -> str:
    """Write the sidecar of shard_path (one count per token of that shard); returns its path."""
    counts = np.asarray(byte_counts, dtype=np.int64).reshape(-1)
    path = sidecar_path(shard_path)
    if counts.size and (counts.min() < 0 or counts.max() > 65535):
        raise SidecarError(f"sidecar {path}: a token covers {int(counts.max())} bytes, more than "
                           "uint16 holds; split such documents before tokenizing")
    write_shard(path, counts)
    return path


def load_sidecar(shard_path: str) -> np.ndarray | None:
    """The shard's per-token byte counts (int64), None if it has no sidecar file."""
    path = sidecar_path(shard_path)
    if not os.path.exists(path):
        return None
    n_tokens, n_counts = read_header(shard_path), read_header(path)
    if n_tokens != n_counts:
        raise SidecarError(f"sidecar {path}: {n_counts} byte counts for {n_tokens} tokens in "
                           f"{os.path.basename(shard_path)}; regenerate both with `pgolf data retokenize`")
    return np.asarray(load_shard(path, mmap=False), dtype=np.int64)


def _load_sidecars(files: list[str]) -> list[np.ndarray] | None:
    parts = [load_sidecar(f) for f in files]
    missing = [f for f, p in zip(files, parts) if p is None]
    if len(missing) == len(files):
        return None
    if missing:
        raise SidecarError(f"validation shard {missing[0]} has no byte sidecar while others do: "
                           f"regenerate {sidecar_path(missing[0])} with `pgolf data retokenize`")
    return parts


def _cut(parts: list[np.ndarray], n_tokens: int) -> torch.Tensor:
    counts = np.concatenate(parts)
    if counts.size < n_tokens:
        raise SidecarError(f"byte sidecars hold {counts.size} counts for {n_tokens} validation tokens; "
                           "regenerate them with `pgolf data retokenize`")
    return torch.from_numpy(np.ascontiguousarray(counts[:n_tokens]))


def load_validation_bytes(files: list[str], n_tokens: int) -> torch.Tensor | None:
    """Per-token original bytes of the concatenated validation shards, cut to n_tokens
    (the length load_validation_tokens kept); None when no shard has a sidecar. Unverified:
    the eval reads them through verified_validation_bytes."""
    files = token_shards_only(list(files))
    parts = _load_sidecars(files)
    return None if parts is None else _cut(parts, n_tokens)


def verified_validation_bytes(files: list[str], n_tokens: int, sp, tokenizer_path: str) -> torch.Tensor | None:
    """load_validation_bytes, after check_sidecars passed on the whole sidecar files."""
    files = token_shards_only(list(files))
    parts = _load_sidecars(files)
    if parts is None:
        return None
    check_sidecars(files, parts, sp, tokenizer_path)
    return _cut(parts, n_tokens)


def check_sidecars(files: list[str], parts: list[np.ndarray], sp, tokenizer_path: str) -> None:
    """Refuse sidecars that nothing vouches for, that differ from their manifest, or whose
    counts the tokens cannot have: SidecarError naming the sidecar."""
    folder = os.path.dirname(os.path.abspath(files[0]))
    manifest = _sidecar_manifest(folder)
    caseops = tokenizer_has_caseops(sp)
    if manifest is None and not caseops:
        # The tokenizer's own byte tables are the challenge's accounting for such shards; a
        # file that silently replaced them could only move the score away from it.
        raise SidecarError(f"sidecar {sidecar_path(files[0])} lies beside shards of {tokenizer_path}, which is "
                           f"not a CaseOps tokenizer, and no {RETOKENIZE_MANIFEST} there records sidecars: remove "
                           "the sidecar files, or regenerate the shards with `pgolf data retokenize --sidecar on`")
    if manifest is not None:
        _check_against_manifest(files, parts, manifest)
    tables = _piece_bytes(sp, caseops)
    for f, counts in zip(files, parts):
        _check_against_pieces(sidecar_path(f), np.asarray(load_shard(f)), counts, tables)


def _sidecar_manifest(folder: str) -> dict | None:
    """What the manifest beside the shards says of their sidecars, None when none does: pgolf's
    retokenize manifest, else a manifest.json with per-split sidecar totals (the shared data's)."""
    for name in (RETOKENIZE_MANIFEST, "manifest.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as fh:
                man = json.loads(fh.read().decode("utf-8"))
            val = man["splits"]["val"]
        except (ValueError, KeyError, TypeError):
            if name == RETOKENIZE_MANIFEST:
                raise SidecarError(f"manifest {path} is not a readable retokenize manifest: regenerate the "
                                   "shards with `pgolf data retokenize`") from None
            continue
        if name == RETOKENIZE_MANIFEST:
            return {"path": path, "sidecar": bool(man.get("sidecar")), "per_file": man.get("sidecars") or {},
                    "bytes": val.get("counted_bytes"), "tokens": val.get("tokens"),
                    "val_files": [f for f in man.get("files", []) if f.startswith("fineweb_val_")]}
        if "sidecar_bytes_total" in val:
            digests = man.get("files") or {}
            return {"path": path, "sidecar": bool(val.get("sidecar_files")),
                    "per_file": {n: {"sha256": (digests.get(n) or {}).get("sha256")}
                                 for n in val.get("sidecar_files") or []},
                    "bytes": val["sidecar_bytes_total"], "tokens": val.get("tokens"),
                    "val_files": val.get("files") or []}
    return None


def _check_against_manifest(files: list[str], parts: list[np.ndarray], man: dict) -> None:
    where, first = f"manifest {man['path']}", sidecar_path(files[0])
    if not man["sidecar"]:
        raise SidecarError(f"sidecar {first}: {where} says these shards were written without byte sidecars: "
                           "remove the sidecar files, or regenerate with `pgolf data retokenize --sidecar on`")
    fix = "regenerate shards and sidecars together with `pgolf data retokenize`"
    for f in files:
        side = sidecar_path(f)
        facts = man["per_file"].get(os.path.basename(side))
        if man["per_file"] and facts is None:
            raise SidecarError(f"sidecar {side} is not listed in {where}: {fix}")
        with open(side, "rb") as fh:
            if (facts or {}).get("sha256") not in (None, hashlib.sha256(fh.read()).hexdigest()):
                raise SidecarError(f"sidecar {side} differs from the file {where} records (sha256): {fix}")
    if sorted(os.path.basename(f) for f in files) == sorted(man["val_files"]):
        for what, got in (("bytes", sum(int(p.sum()) for p in parts)), ("tokens", sum(p.size for p in parts))):
            if man[what] not in (None, got):
                raise SidecarError(f"sidecar {first}: the val split has {got:,} {what}, {where} records "
                                   f"{man[what]:,}: {fix}")


def _piece_bytes(sp, caseops: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Tables over ids: the bytes each piece spells with its leading space; whether the piece
    determines them (not byte fallback, which shares a character's bytes, nor <unk>, which
    hides them); whether it is a CaseOps marker. And the ESC marker's id (-1 without CaseOps)."""
    base, space, _ = build_byte_tables(sp, 65536)
    spelled = base.astype(np.int64) + space
    judged = np.ones(65536, dtype=np.bool_)
    judged[[i for i in range(sp.vocab_size()) if sp.is_byte(i) or sp.is_unknown(i)]] = False
    marker = np.zeros(65536, dtype=np.bool_)
    ids = [sp.piece_to_id(s) for s in CASEOPS_SYMBOLS] if caseops else []
    marker[ids] = True
    spelled[marker] = 0   # a case marker stands for no byte of the original text
    return spelled, judged, marker, ids[CASEOPS_SYMBOLS.index(CASEOPS_ESC)] if ids else -1


def _check_against_pieces(side: str, tokens: np.ndarray, counts: np.ndarray, tables) -> None:
    spelled, judged_ids, marker, esc = tables
    total, counted, expected, agree, judged = int(counts.sum()), 0, 0, 0, 0
    step = 1 << 22  # bounded memory on the challenge's 62M-token val shard
    for lo in range(0, tokens.size, step):
        t, c = tokens[lo:lo + step], counts[lo:lo + step]
        want, judge = spelled[t], judged_ids[t]
        counted, expected = counted + int(c[judge].sum()), expected + int(want[judge].sum())
        judged += int(np.count_nonzero(judge))
        agree += int(np.count_nonzero((c == want) & judge))
        bad = lo + np.flatnonzero(marker[t] & (c != 0))
        bad = bad[(bad == 0) | (tokens[bad - 1] != esc)]   # after ESC a marker is literal text
        if bad.size:
            raise SidecarError(f"sidecar {side}: token {int(bad[0]):,} is a CaseOps case marker but is worth "
                               f"{int(counts[bad[0]])} bytes (a marker stands for none): regenerate it with "
                               "`pgolf data retokenize --caseops`")
    fix = "regenerate it with `pgolf data retokenize`"
    if total == 0:
        raise SidecarError(f"sidecar {side}: every count is 0, so no byte would be scored: {fix}")
    if judged and agree < SIDECAR_MIN_AGREEMENT * judged:
        raise SidecarError(f"sidecar {side}: only {agree / judged:.1%} of its counts equal the bytes their token "
                           f"spells (at least {SIDECAR_MIN_AGREEMENT:.0%} expected): wrong or misaligned counts; {fix}")
    lo_r, hi_r = SIDECAR_RATIO_BAND
    if expected and not lo_r <= counted / expected <= hi_r:
        raise SidecarError(f"sidecar {side}: counts {counted:,} bytes where its tokens spell {expected:,} (ratio "
                           f"{counted / expected:.3f}, expected {lo_r}-{hi_r}): {fix}")


class SidecarBytes:
    """Byte accounting from a sidecar: target i (token i+1) is worth bytes[i+1].

    Offers ByteTables' interface plus window_bytes(x, y, starts), which eval needs because
    the count belongs to a position, not to a (previous, target) token pair.
    """

    def __init__(self, token_bytes: torch.Tensor, vocab_size: int, device: torch.device | str = "cpu"):
        self.bytes = torch.as_tensor(token_bytes, dtype=torch.int64).to(device)
        self.device = torch.device(device)
        self._vocab = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def to(self, device: torch.device | str) -> "SidecarBytes":
        dev = torch.device(device)
        return self if dev == self.device else SidecarBytes(self.bytes, self._vocab, dev)

    def window_bytes(self, starts: torch.Tensor, width: int) -> torch.Tensor:
        """[B, width] bytes of the targets of windows starting at token `starts` (int64)."""
        pos = starts.to(self.device).long()[:, None] + torch.arange(1, width + 1, device=self.device)
        return self.bytes[pos]

    def total(self, lo: int = 0, hi: int | None = None) -> int:
        """Bytes of targets [lo, hi) (all scored targets by default)."""
        hi = self.bytes.numel() - 1 if hi is None else hi
        return int(self.bytes[lo + 1:hi + 1].sum())
