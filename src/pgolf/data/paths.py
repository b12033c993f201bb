"""Where a run's data is: the shard globs, the tokenizer, and the validation set it scores."""

import glob
import os
from dataclasses import dataclass

import torch

from pgolf.config_tree import Config
from pgolf.data.caseops import tokenizer_has_caseops
from pgolf.data.loader import check_token_range, find_shards, load_validation_tokens
from pgolf.data.sidecar import SidecarBytes, is_sidecar, token_shards_only, verified_validation_bytes
from pgolf.data.tokenizer import TokenizerError, build_byte_tables, load_tokenizer
from pgolf.errors import TrainingError


@dataclass
class ValData:
    """The validation tokens a run scores and the byte tables that turn NLL into bpb."""

    tokens: torch.Tensor
    tables: tuple
    tokenizer: str


def corpus_cache_root(cache_dir: str = "") -> str:
    """cache_dir, else $PGOLF_CACHE, else ~/.cache/pgolf."""
    return os.path.expanduser(cache_dir or os.environ.get("PGOLF_CACHE") or "~/.cache/pgolf")


def resolve_data_paths(cfg: Config) -> tuple[str, str, str]:
    """(train glob, val glob, tokenizer path) from data.path, failing with a fix."""
    d = cfg.data
    if not d.path:
        d.path = default_data_path(cfg)
    if not d.path:
        raise TrainingError("data.path is empty and neither ./data/datasets/fineweb10B_sp1024 nor a prepared "
                            "embedded corpus exists: set DATA_PATH (or --set data.path=DIR) to a folder of "
                            "fineweb_train_*.bin / fineweb_val_*.bin shards, or run `pgolf data prepare`")
    if not os.path.isdir(d.path):
        raise TrainingError(f"data.path {d.path} is not a folder: set DATA_PATH (or --set data.path=DIR) to the "
                            "folder holding fineweb_train_*.bin / fineweb_val_*.bin")
    train_glob = os.path.join(d.path, d.train_pattern)
    val_glob = os.path.join(d.path, d.val_pattern)
    tok = d.tokenizer_path or find_tokenizer(d.path, cfg.model.vocab_size, val_glob)
    return train_glob, val_glob, tok


def find_tokenizer(data_path: str, vocab_size: int, val_glob: str) -> str:
    """A *.model beside the shards, else <data_path>/../../tokenizers/*_<vocab>_bpe.model; a
    folder whose validation shards carry byte sidecars (CaseOps) takes a *_<vocab>_bpe_*caseops*
    tokenizer first, which the plain pattern does not match."""
    candidates = sorted(glob.glob(os.path.join(data_path, "*.model")))
    tok_dir = os.path.join(data_path, "..", "..", "tokenizers")
    plain = sorted(glob.glob(os.path.join(tok_dir, f"*_{vocab_size}_bpe.model")))
    if any(is_sidecar(f) for f in glob.glob(val_glob)):
        candidates += sorted(glob.glob(os.path.join(tok_dir, f"*_{vocab_size}_bpe_*caseops*.model")))
    candidates += plain
    if not candidates and not glob.glob(val_glob) and not glob.glob(os.path.join(data_path, "*.bin")):
        # A folder without shards is the wrong folder, whatever the tokenizer search says.
        raise TrainingError(f"data.path {data_path} holds no shards ({os.path.basename(val_glob)}): set DATA_PATH "
                            "(or --set data.path=DIR) to the folder holding fineweb_train_*.bin / fineweb_val_*.bin")
    if not candidates:
        raise TrainingError(f"no tokenizer found beside {data_path}: set TOKENIZER_PATH "
                            "(or --set data.tokenizer_path=FILE)")
    return candidates[0]


def default_data_path(cfg: Config) -> str:
    """Where a run with no data.path looks (a bundled train_gpt.py relies on this): the
    reference's ./data layout, then an embedded corpus already prepared by pgolf."""
    v = cfg.model.vocab_size
    candidates = (os.path.join("data", "datasets", f"fineweb10B_sp{v}"),
                  os.path.join(corpus_cache_root(cfg.data.cache_dir), f"embedded_sp{v}"))
    for folder in candidates:
        if glob.glob(os.path.join(folder, cfg.data.val_pattern)):
            print(f"data.path not set: using {folder}", flush=True)
            return folder
    return ""


def load_val(cfg: Config, device) -> ValData:
    """Validation tokens and their byte accounting: the tokenizer's tables, or the per-token
    byte sidecars when the shards carry them (CaseOps: bpb is charged on the original text),
    verified against their manifest and the tokens' pieces first (data.sidecar.check_sidecars)."""
    _, val_glob, tok_path = resolve_data_paths(cfg)
    sp = load_tokenizer(tok_path, cfg.model.vocab_size)
    files = token_shards_only(find_shards(val_glob))
    tokens = load_validation_tokens(files, cfg.eval.seq_len)
    check_token_range(tokens.numpy(), cfg.model.vocab_size, f"validation shards {val_glob}")
    if cfg.eval.max_tokens and tokens.numel() - 1 > cfg.eval.max_tokens:
        n = (cfg.eval.max_tokens // cfg.eval.seq_len) * cfg.eval.seq_len
        tokens = tokens[:n + 1]
    side = verified_validation_bytes(files, tokens.numel(), sp, tok_path)
    if side is None and tokenizer_has_caseops(sp):
        # Without sidecars the control symbols would be charged as text: a bpb ~8% too low.
        raise TokenizerError(f"tokenizer {tok_path} is a CaseOps tokenizer but {val_glob} has no "
                             "fineweb_val_bytes_*.bin sidecars: regenerate the shards with "
                             "`pgolf data retokenize --caseops`")
    tables = build_byte_tables(sp, cfg.model.vocab_size) if side is None else SidecarBytes(side, cfg.model.vocab_size)
    return ValData(tokens, tables, tok_path)
