"""Train a SentencePiece BPE with the challenge's settings and re-tokenize documents into shards.

The settings are those of the challenge's data/download_hf_docs_and_tokenize.py (BPE,
character_coverage 0.999, split digits, nmt_nfkc, no dummy prefix, hard_vocab_limit off,
pad/bos/eos/unk = 0/1/2/3) with byte fallback as the shipped models have it: off for the
1024 vocabulary, on for larger ones. With CaseOps the four control symbols are reserved
as user-defined pieces 4-7 (the #1855 record's tokenizer) and the text is CaseOps-encoded
before training and before tokenizing. Documents are written as BOS + tokens, no EOS.
"""

import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np
import sentencepiece

from pgolf.atomic import atomic_write
from pgolf.data.caseops import CASEOPS_NAME, CASEOPS_SYMBOLS, caseops_piece_bytes, encode_caseops, tokenizer_has_caseops
from pgolf.data.corpus import embedded_documents
from pgolf.data.shards import load_shard, write_shard
from pgolf.data.sidecar import RETOKENIZE_MANIFEST, token_shards_only, write_sidecar
from pgolf.errors import PgolfError

TOKENIZER_SHARD_TOKENS = 100_000_000   # the challenge's train shard size (10^8 tokens)


class TokenizerTrainError(PgolfError, ValueError):
    """A text source or tokenizer setting that cannot be used for training or re-tokenizing."""


def challenge_trainer_options(vocab_size: int, byte_fallback: bool | None = None,
                              caseops: bool = False, threads: int = 2) -> dict:
    """SentencePieceTrainer options of the challenge (byte_fallback None = off only for 1024)."""
    if byte_fallback is None:
        byte_fallback = vocab_size > 1024
    opts = dict(model_type="bpe", vocab_size=int(vocab_size), character_coverage=0.999,
                byte_fallback=bool(byte_fallback), split_digits=True,
                normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
                pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False,
                num_threads=max(1, int(threads)), minloglevel=2)
    if caseops:
        opts["user_defined_symbols"] = list(CASEOPS_SYMBOLS)
    return opts


def _clean_document(text: str) -> str:
    # As the challenge feeds its trainer: NULs would end a C string inside SentencePiece.
    return text.replace("\x00", " ").strip()


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_path: str, *,
                    byte_fallback: bool | None = None, caseops: bool = False, threads: int = 2,
                    max_docs: int = 0) -> dict:
    """Train on documents (raw text; CaseOps-encoded here when caseops) and write out_path.

    Each document is one training sentence; the longest one sets max_sentence_length so no
    document is silently dropped. Returns a summary (documents, characters, vocab, path).
    """
    if vocab_size < 8:
        raise TokenizerTrainError(f"vocab_size {vocab_size} is too small: use at least 8 (1024, 4096, 8192 ...)")
    out_path = os.fspath(out_path)
    refuse_existing_output(out_path)   # before the corpus is read: documents is lazy
    docs = []
    for text in documents:
        if max_docs and len(docs) >= max_docs:
            break
        text = _clean_document(text)
        if text:
            docs.append(encode_caseops(text) if caseops else text)
    if not docs:
        raise TokenizerTrainError("the text source holds no non-empty document: pass .txt/.jsonl files, "
                                  "a shard folder with --source-tokenizer, or `embedded`")
    longest = max(len(d.encode("utf-8")) for d in docs)
    buf = io.BytesIO()
    opts = challenge_trainer_options(vocab_size, byte_fallback, caseops, threads)
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=buf,
                                                 max_sentence_length=max(4192, longest),
                                                 input_sentence_size=0, **opts)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TokenizerTrainError(f"SentencePiece could not train a {vocab_size}-piece BPE on "
                                  f"{len(docs)} documents ({first}); use a smaller --vocab-size "
                                  "or more text") from None
    model = buf.getvalue()
    try:  # no-clobber, also against another writer that created the file meanwhile
        atomic_write(out_path, lambda f: f.write(model), overwrite=False)
    except FileExistsError:
        refuse_existing_output(out_path)
        raise
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    return {"path": out_path, "vocab_size": sp.vocab_size(), "documents": len(docs),
            "characters": sum(len(d) for d in docs), "byte_fallback": opts["byte_fallback"],
            "text_transform": CASEOPS_NAME if caseops else "identity"}


def refuse_existing_output(path: str) -> None:
    """A one-line refusal of an output path that already exists (pgolf replaces no file it
    was not asked to create)."""
    if os.path.lexists(path):
        what = "a folder" if os.path.isdir(path) else "a file"
        raise TokenizerTrainError(f"--out {path} already exists ({what}): choose another path or remove it "
                                  "(nothing was changed)")


def _utf8(raw: bytes, path: str, line: int = 0) -> str:
    # Universal newlines, as reading in text mode would give.
    try:
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        where = f"{path}:{line}" if line else path
        raise TokenizerTrainError(f"text source {where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                  f"offset {exc.start}): pass .txt/.jsonl files in UTF-8, or a shard "
                                  "folder with --source-tokenizer") from None


def read_text_documents(path: str) -> Iterator[str]:
    """Documents of a text file: .jsonl = one per line ({"text": ...} or a JSON string);
    any other file = one document."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TokenizerTrainError(f"text source {path} not found: pass .txt or .jsonl files, a shard "
                                  "folder, or `embedded`")
    with open(path, "rb") as fh:   # bytes, so an undecodable line is named exactly
        if not path.endswith(".jsonl"):
            yield _utf8(fh.read(), path)
            return
        for n, raw in enumerate(fh, 1):
            line = _utf8(raw, path, n)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                yield obj["text"] if isinstance(obj, dict) else str(obj)
            except (ValueError, KeyError, TypeError):
                raise TokenizerTrainError(f"{path}:{n}: not a JSON string or object with a \"text\" "
                                          "field; write one document per line") from None


def shard_documents(files: list[str], sp: sentencepiece.SentencePieceProcessor) -> Iterator[str]:
    """Decode token shards back to documents (split at BOS). Text comes back as the source
    tokenizer normalized it; characters it mapped to <unk> come back as ' ⁇ '."""
    bos = sp.bos_id()
    carry = np.zeros(0, dtype=np.int64)   # a document continues across shard boundaries
    for f in token_shards_only(sorted(files)):
        tokens = np.concatenate([carry, np.asarray(load_shard(f), dtype=np.int64)])
        starts = np.flatnonzero(tokens == bos)
        cut = int(starts[-1]) if starts.size else 0
        yield from _split_documents(tokens[:cut], bos, sp)
        carry = tokens[cut:]
    yield from _split_documents(carry, bos, sp)


def _split_documents(tokens: np.ndarray, bos: int, sp: sentencepiece.SentencePieceProcessor) -> Iterator[str]:
    starts = list(np.flatnonzero(tokens == bos))
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for a, b in zip(starts, starts[1:] + [tokens.size]):
        body = tokens[a + 1:b] if tokens[a] == bos else tokens[a:b]
        if body.size:
            yield sp.decode(body.tolist())


def resolve_text_source(specs: list[str], source_tokenizer: str = "",
                        val_docs: int = 50_000) -> Callable[[], Iterator[tuple[str, str]]]:
    """A re-iterable source of (split, document): split is "train" or "val".

    A spec is `embedded` (the Shakespeare corpus, its own 10% val split), a folder of
    fineweb_{train,val}_*.bin shards (decoded with source_tokenizer, splits kept), or a
    .txt/.jsonl file (the first val_docs documents over all files are val, as the
    challenge puts its first 50,000 documents in validation).
    """
    if not specs:
        raise TokenizerTrainError("no text source given: pass .txt/.jsonl files, a shard folder, or `embedded`")
    sp = None
    if any(os.path.isdir(s) for s in specs):
        if not source_tokenizer or not os.path.isfile(source_tokenizer):
            raise TokenizerTrainError("a shard folder source needs --source-tokenizer, the .model that "
                                      "wrote those shards")
        sp = _load_model(source_tokenizer, "--source-tokenizer")

    def gen() -> Iterator[tuple[str, str]]:
        seen = 0
        for spec in specs:
            if spec == "embedded":
                docs = embedded_documents()
                n_val = max(1, int(round(len(docs) * 0.1)))
                yield from (("train", d) for d in docs[:-n_val])
                yield from (("val", d) for d in docs[-n_val:])
            elif os.path.isdir(spec):
                for split in ("train", "val"):
                    files = glob.glob(os.path.join(spec, f"fineweb_{split}_*.bin"))
                    yield from ((split, d) for d in shard_documents(files, sp))
            else:
                for d in read_text_documents(spec):
                    yield ("val" if seen < val_docs else "train"), d
                    seen += 1
    return gen


class ShardWriter:
    """Buffers one split's tokens (and byte counts) and writes official shards of shard_tokens."""

    def __init__(self, out_dir: str, split: str, shard_tokens: int, sidecar: bool) -> None:
        self.out_dir, self.split, self.shard_tokens, self.sidecar = out_dir, split, shard_tokens, sidecar
        self.tokens: list[int] = []
        self.counts: list[int] = []
        self.files: list[str] = []
        self.sidecars: dict[str, dict] = {}   # name -> tokens, bytes, sha256: what the eval verifies

    def add(self, ids: list[int], counts: list[int] | None) -> None:
        self.tokens += ids
        if self.sidecar:
            self.counts += counts
        while len(self.tokens) >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        path = os.path.join(self.out_dir, f"fineweb_{self.split}_{len(self.files):06d}.bin")
        write_shard(path, np.asarray(self.tokens[:n], dtype=np.int64))
        if self.sidecar:
            side = write_sidecar(path, self.counts[:n])
            with open(side, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            self.sidecars[os.path.basename(side)] = {"tokens": n, "bytes": int(sum(self.counts[:n])),
                                                     "sha256": digest}
            self.counts = self.counts[n:]
        self.tokens = self.tokens[n:]
        self.files.append(path)

    def close(self) -> None:
        if self.tokens:
            self._flush(len(self.tokens))


def encode_document(sp: sentencepiece.SentencePieceProcessor, text: str,
                    caseops: bool) -> tuple[list[int], list[int], int]:
    """(BOS + token ids, per-token original bytes with 0 for BOS, original UTF-8 bytes covered).

    Bytes come from each token's surface (the slice of the input it covers), so they are
    the original text's bytes even where SentencePiece normalizes (NFKC, whitespace runs);
    only leading/trailing whitespace, which it drops, is covered by no token.
    """
    enc = encode_caseops(text) if caseops else text
    proto = sp.encode(enc, out_type="proto")
    ids = [sp.bos_id()] + [p.id for p in proto.pieces]
    surfaces = [p.surface for p in proto.pieces]
    counts = caseops_piece_bytes(surfaces) if caseops else [len(s.encode("utf-8")) for s in surfaces]
    return ids, [0] + counts, sum(counts)


def retokenize(source: Callable[[], Iterator[tuple[str, str]]], tokenizer_path: str, out_dir: str, *,
               caseops: bool = False, sidecar: bool | None = None,
               shard_tokens: int = TOKENIZER_SHARD_TOKENS, log: Callable[[str], None] = print) -> dict:
    """Tokenize every (split, document) of source into out_dir's fineweb_{train,val}_*.bin.

    Validation shards get byte sidecars when sidecar is on (default: with CaseOps), so the
    eval charges the original text's bytes. Writes a manifest with counts and byte totals.
    """
    sidecar = caseops if sidecar is None else sidecar
    sp = _load_model(tokenizer_path, "--tokenizer")
    if caseops and not tokenizer_has_caseops(sp):
        raise TokenizerTrainError(f"tokenizer {tokenizer_path} has no CaseOps control pieces: train it "
                                  "with `pgolf data tokenizer --caseops` or drop --caseops")
    if sp.vocab_size() > 65536:
        raise TokenizerTrainError(f"tokenizer {tokenizer_path} has {sp.vocab_size()} pieces; shards hold "
                                  "uint16 ids, so use a vocabulary of at most 65536")
    out_dir = os.fspath(out_dir)
    _refuse_taken_folder(out_dir)
    # Everything is written into a temporary folder beside out_dir and moved in at the end:
    # a failure (bad input, full disk, Ctrl-C) leaves out_dir as it was.
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.retokenize.", dir=parent)
    except OSError as exc:
        raise TokenizerTrainError(f"cannot create --out {out_dir} ({exc.strerror or exc}): choose a "
                                  "writable place") from None
    try:
        manifest = _retokenize_into(work, source, sp, tokenizer_path, caseops, sidecar, shard_tokens, log)
        _move_outputs(work, out_dir, manifest["files"] + sorted(manifest["sidecars"]) + [RETOKENIZE_MANIFEST])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _load_model(path: str, flag: str) -> sentencepiece.SentencePieceProcessor:
    sp = sentencepiece.SentencePieceProcessor()
    try:
        ok = os.path.isfile(path) and sp.Load(os.fspath(path)) is not False
    except (OSError, RuntimeError):
        ok = False
    if not ok:
        raise TokenizerTrainError(f"{flag} {path} is not found or not a SentencePiece model: pass a "
                                  ".model file (train one with `pgolf data tokenizer`)")
    return sp


def _refuse_taken_folder(out_dir: str) -> None:
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise TokenizerTrainError(f"--out {out_dir} exists and is not a folder: choose another path or remove "
                                  "it (nothing was changed)")
    taken = sorted(glob.glob(os.path.join(glob.escape(out_dir), "fineweb_*.bin")))
    taken += [p for p in [os.path.join(out_dir, RETOKENIZE_MANIFEST)] if os.path.lexists(p)]
    if taken:
        raise TokenizerTrainError(f"--out {out_dir} already holds shards ({os.path.basename(taken[0])}): choose "
                                  "an empty folder or remove them (nothing was changed)")


def _move_outputs(work: str, out_dir: str, names: list[str]) -> None:
    """Move the finished files into out_dir, the manifest (last name) last: it marks the set complete."""
    if not os.path.lexists(out_dir):
        try:
            os.chmod(work, 0o755)  # mkdtemp's 0700 would hide the shards from other users
            os.rename(work, out_dir)
            return
        except OSError:
            pass  # created meanwhile: move file by file, refusing collisions
    _refuse_taken_folder(out_dir)
    for name in names:
        os.rename(os.path.join(work, name), os.path.join(out_dir, name))


def _retokenize_into(out_dir: str, source: Callable[[], Iterator[tuple[str, str]]],
                     sp: sentencepiece.SentencePieceProcessor, tokenizer_path: str, caseops: bool,
                     sidecar: bool, shard_tokens: int, log: Callable[[str], None]) -> dict:
    writers = {s: ShardWriter(out_dir, s, shard_tokens, sidecar and s == "val") for s in ("train", "val")}
    stats = {s: {"documents": 0, "tokens": 0, "text_bytes": 0, "counted_bytes": 0} for s in writers}
    for split, text in source():
        ids, counts, covered = encode_document(sp, text, caseops)
        writers[split].add(ids, counts)
        st = stats[split]
        st["documents"] += 1
        st["tokens"] += len(ids)
        st["text_bytes"] += len(text.encode("utf-8"))
        st["counted_bytes"] += covered
        if st["documents"] % 10_000 == 0:
            log(f"retokenize: {split} {st['documents']:,} documents, {st['tokens']:,} tokens")
    for w in writers.values():
        w.close()
    if not writers["val"].files or not writers["train"].files:
        raise TokenizerTrainError(f"the source gave {stats['train']['documents']} train and "
                                  f"{stats['val']['documents']} val documents; both splits need at least "
                                  "one (set --val-docs)")
    with open(tokenizer_path, "rb") as fh:
        tok_digest = hashlib.sha256(fh.read()).hexdigest()
    manifest = {"tokenizer": os.path.abspath(tokenizer_path), "tokenizer_sha256": tok_digest,
                "vocab_size": sp.vocab_size(), "text_transform": CASEOPS_NAME if caseops else "identity",
                "sidecar": bool(sidecar), "shard_tokens": shard_tokens, "splits": stats,
                "files": sorted(os.path.basename(f) for w in writers.values() for f in w.files),
                "sidecars": writers["val"].sidecars}
    text = json.dumps(manifest, indent=1, sort_keys=True)
    atomic_write(os.path.join(out_dir, RETOKENIZE_MANIFEST), lambda f: f.write(text.encode("utf-8")))
    return manifest
