"""Download the challenge's published FineWeb shards and tokenizer from the Hugging Face Hub."""

import json
import os
import shutil
import tempfile

import numpy as np

from pgolf.data.shards import SHARD_HEADER_BYTES, ShardError, load_shard, read_header
from pgolf.errors import PgolfError

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REMOTE_ROOT = "datasets"
FINEWEB_MANIFEST = "datasets/manifest.json"


class FinewebError(PgolfError, ValueError):
    """The challenge dataset cannot be downloaded or verified."""


def _vocab(variant: str) -> int:
    if not variant.startswith("sp") or not variant[2:].isdigit():
        raise FinewebError(f"dataset variant {variant!r} is not of the form 'sp<vocab>', "
                           "e.g. 'sp1024'")
    return int(variant[2:])


def fineweb_plan(variant: str = "sp1024", train_shards: int = 80,
                 remote_root: str = FINEWEB_REMOTE_ROOT) -> list[tuple[str, str]]:
    """(remote path, local path relative to out_dir) for the files the naming scheme implies."""
    vocab = _vocab(variant)
    ds = f"fineweb10B_{variant}"
    names = [f"fineweb_val_{0:06d}.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    plan = [(f"{remote_root}/datasets/{ds}/{n}", f"datasets/{ds}/{n}") for n in names]
    tok = f"fineweb_{vocab}_bpe.model"
    plan.append((f"{remote_root}/tokenizers/{tok}", f"tokenizers/{tok}"))
    return plan


def _manifest_sizes(text: str) -> dict[str, int]:
    # The manifest is any JSON holding entries with a "path" and a "size" (or "bytes"),
    # nested anywhere; paths are repo paths.
    sizes = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            path, size = node.get("path"), node.get("size", node.get("bytes"))
            if isinstance(path, str) and isinstance(size, int):
                sizes[path] = size
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(text))
    return sizes


def _verify(path: str, expected_size: int | None) -> None:
    """Raise ShardError/FinewebError when a local file is not a complete, valid download."""
    size = os.path.getsize(path)
    if expected_size is not None and size != expected_size:
        raise FinewebError(f"size mismatch: expected {expected_size} bytes got {size}")
    if path.endswith(".bin") or path.endswith(".bin.part"):
        read_header(path)
    elif path.endswith(".model") or path.endswith(".model.part"):
        import sentencepiece  # already a dependency; local to keep this module's top light
        try:
            sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError):
            raise FinewebError("not a readable SentencePiece model") from None


def _is_done(path: str, expected_size: int | None) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        _verify(path, expected_size)
    except (ShardError, FinewebError):
        return False
    return True


def _hub_error(exc: Exception, what: str, repo_id: str) -> FinewebError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    offline = " (HF_HUB_OFFLINE is set: unset it)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return FinewebError(f"downloading {what} from {repo_id} failed{offline}: "
                        f"{type(exc).__name__}: {first}; check the network/endpoint and retry "
                        "(finished files are kept)")


def _remote_missing() -> type:
    # Only a 404 from the server means "no such file"; LocalEntryNotFoundError (also an
    # EntryNotFoundError) means the network failed and must not trigger the fallback.
    from huggingface_hub import errors
    return getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)


def _fetch_manifest(repo_id: str, manifest_path: str, common: dict, log) -> dict | None:
    from huggingface_hub import hf_hub_download
    if not manifest_path:
        return None
    try:
        got = hf_hub_download(repo_id=repo_id, filename=manifest_path, **common)
    except _remote_missing():
        log(f"fineweb: no {manifest_path} on {repo_id}; using the standard file names")
        return None
    except Exception as exc:
        raise _hub_error(exc, manifest_path, repo_id) from None
    try:
        with open(got, encoding="utf-8") as fh:
            return _manifest_sizes(fh.read())
    except ValueError:  # bad JSON or bytes that are not UTF-8
        raise FinewebError(f"{manifest_path} on {repo_id} is not valid JSON; pass "
                           "manifest_path='' to use the standard file names") from None


def _fetch_one(repo_id: str, remote: str, dest: str, expected: int | None,
                  common: dict) -> None:
    from huggingface_hub import hf_hub_download
    try:
        got = hf_hub_download(repo_id=repo_id, filename=remote, **common)
    except Exception as exc:
        raise _hub_error(exc, remote, repo_id) from None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    # The cache sits on the destination's filesystem, so this is a rename, not a copy.
    shutil.move(os.path.realpath(got), part)
    try:
        _verify(part, expected)
    except (ShardError, FinewebError) as exc:
        os.unlink(part)
        problem = getattr(exc, "problem", str(exc))
        raise FinewebError(f"{remote} downloaded from {repo_id} is corrupt ({problem}); "
                           "deleted it: retry, and report the file if it persists") from None
    os.replace(part, dest)


def _select(plan: list[tuple[str, str]], sizes: dict | None, variant: str,
               remote_root: str, train_shards: int) -> list[tuple[str, str, int | None]]:
    if not sizes:
        return [(r, l, None) for r, l in plan]
    ds = f"{remote_root}/datasets/fineweb10B_{variant}/"
    published = sum(1 for p in sizes if p.startswith(ds + "fineweb_train_"))
    if published < train_shards:
        raise FinewebError(f"{train_shards} train shards requested but the manifest lists "
                           f"{published} for {variant}; ask for at most {published}")
    wanted = dict(plan)
    for p in sorted(sizes):
        if p.startswith(ds + "fineweb_val_"):
            wanted.setdefault(p, p[len(remote_root) + 1:])
    return [(r, l, sizes.get(r)) for r, l in wanted.items()]


def download_fineweb(variant: str = "sp1024", train_shards: int = 80, out_dir: str = "data",
                     repo_id: str = FINEWEB_REPO_ID, endpoint: str | None = None, log=print,
                     manifest_path: str = FINEWEB_MANIFEST, remote_root: str = FINEWEB_REMOTE_ROOT,
                     revision: str = "main", token: str | bool | None = None) -> list[str]:
    """Fetch val + train shards and the tokenizer into out_dir/datasets/... and out_dir/tokenizers/.

    Resumable: files already present with a valid header (and the manifest's size) are kept.
    Returns the local paths of all files, shards sorted first, the tokenizer last.
    """
    if train_shards < 0:
        raise FinewebError(f"train_shards {train_shards} must be >= 0")
    plan = fineweb_plan(variant, train_shards, remote_root)
    os.makedirs(out_dir, exist_ok=True)
    cache = tempfile.mkdtemp(prefix=".hf_cache_", dir=out_dir)
    common = dict(repo_type="dataset", revision=revision, cache_dir=cache, endpoint=endpoint,
                  token=token)
    paths, fetched = [], 0
    try:
        sizes = _fetch_manifest(repo_id, manifest_path, common, log)
        for remote, local, expected in _select(plan, sizes, variant, remote_root, train_shards):
            dest = os.path.join(out_dir, local)
            paths.append(dest)
            if _is_done(dest, expected):
                continue
            log(f"fineweb: downloading {remote}")
            _fetch_one(repo_id, remote, dest, expected, common)
            fetched += 1
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    log(f"fineweb: {len(paths)} files in {out_dir} ({fetched} downloaded, "
        f"{len(paths) - fetched} already present)")
    return sorted(paths, key=lambda p: (p.endswith(".model"), p))


def inspect_shard(path: str, tokenizer=None, n: int = 32) -> str:
    """Human-readable summary of a shard: header, sizes, first n tokens (decoded if possible)."""
    path = os.fspath(path)
    size = os.path.getsize(path) if os.path.exists(path) else -1
    with open(path, "rb") as fh:
        raw = fh.read(SHARD_HEADER_BYTES)
    head = np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<i4")[:3].tolist()
    lines = [f"file: {path}", f"size: {size:,} bytes",
             f"header: magic={head[0] if head else '?'} version={head[1] if len(head) > 1 else '?'} "
             f"count={head[2] if len(head) > 2 else '?'}"]
    try:
        count = read_header(path)
    except ShardError as exc:
        lines.append(f"INVALID: {exc}")
        return "\n".join(lines)
    tokens = load_shard(path)
    first = np.asarray(tokens[:n]).astype(np.int64)
    lines += [f"valid: {count:,} tokens", f"first {len(first)} tokens: {first.tolist()}"]
    if tokenizer is not None:
        sp = tokenizer
        if isinstance(tokenizer, (str, os.PathLike)):
            import sentencepiece
            sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(tokenizer))
        bad = first[first >= sp.vocab_size()]
        if bad.size:
            lines.append(f"ids {bad.tolist()} exceed the tokenizer's vocabulary {sp.vocab_size()}")
        else:
            lines.append(f"pieces: {[sp.id_to_piece(int(t)) for t in first]}")
            lines.append(f"text: {sp.decode(first.tolist())!r}")
        if sp.bos_id() >= 0:
            docs = int(np.count_nonzero(np.asarray(tokens) == sp.bos_id()))
            lines.append(f"documents (BOS count): {docs:,}")
    return "\n".join(lines)
