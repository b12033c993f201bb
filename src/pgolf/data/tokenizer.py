"""SentencePiece loading and the per-token byte tables that turn NLL into bits per byte."""

import os

import numpy as np
import sentencepiece
import torch

from pgolf.errors import PgolfError

TOKENIZER_SPACE_MARK = "\u2581"


class TokenizerError(PgolfError, ValueError):
    """A tokenizer file that is missing, unreadable or does not match the model."""


def load_tokenizer(path: str, vocab_size: int) -> sentencepiece.SentencePieceProcessor:
    """Load a SentencePiece model and check its vocabulary against model.vocab_size."""
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise TokenizerError(f"tokenizer {path!r} not found: set data.tokenizer_path to a "
                             "SentencePiece .model file (or fetch it with `pgolf data fineweb`)")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        ok = sp.Load(path)
    except (OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"tokenizer {path} is not a readable SentencePiece model ({first}): "
                             "re-download or regenerate it") from None
    if ok is False:
        raise TokenizerError(f"tokenizer {path} is not a readable SentencePiece model: "
                             "re-download or regenerate it")
    if sp.vocab_size() != vocab_size:
        raise TokenizerError(
            f"tokenizer {path} has vocabulary {sp.vocab_size()} but model.vocab_size is "
            f"{vocab_size}: pass the matching tokenizer with data.tokenizer_path or set "
            "model.vocab_size")
    return sp


def build_byte_tables(sp: sentencepiece.SentencePieceProcessor,
                      vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base_bytes int16, has_leading_space bool, is_boundary bool), each of length vocab_size.

    Control/unknown/unused pieces and ids past the tokenizer are boundaries worth 0 bytes;
    byte-fallback pieces are 1 byte; a normal piece is the UTF-8 length of its text without the
    leading space mark, whose byte is added by count_bytes only after a non-boundary token.
    """
    base = np.zeros(vocab_size, dtype=np.int16)
    space = np.zeros(vocab_size, dtype=np.bool_)
    boundary = np.ones(vocab_size, dtype=np.bool_)
    for i in range(min(vocab_size, sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(TOKENIZER_SPACE_MARK):
            space[i] = True
            piece = piece[len(TOKENIZER_SPACE_MARK):]
        base[i] = len(piece.encode("utf-8"))
    return base, space, boundary


def _as_tensor(a, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(a)
    return t.to(device) if t.device != device else t


def count_bytes(prev_ids: torch.Tensor, tgt_ids: torch.Tensor, tables) -> torch.Tensor:
    """Per-target byte counts (int64, same shape as tgt_ids).

    bytes = base[tgt] + (has_leading_space[tgt] and not is_boundary[prev]).
    """
    tgt_ids = torch.as_tensor(tgt_ids)
    prev_ids = torch.as_tensor(prev_ids)
    dev = tgt_ids.device
    base, space, boundary = (_as_tensor(t, dev) for t in tables)
    tgt = tgt_ids.long()
    prev = prev_ids.long().to(dev)
    extra = space[tgt] & ~boundary[prev]
    return base[tgt].long() + extra.long()


def decode_tokens(sp: sentencepiece.SentencePieceProcessor, ids) -> str:
    """Decode token ids (list, numpy array or tensor) to text."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return sp.decode([int(i) for i in ids])
