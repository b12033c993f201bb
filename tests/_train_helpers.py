"""A tiny training config over the embedded corpus, shared by the loop tests."""

from pgolf.config import resolve_config
from pgolf.config_tree import Config


def tiny(corpus, *sets) -> Config:
    base = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1",
            "model.bigram_dim=8", "model.ve_dim=8", "model.bigram_vocab_size=128", "run.iterations=6",
            "run.train_batch_tokens=512", "run.train_seq_len=64", "run.accum_world=1",
            "run.max_wallclock_seconds=0", "run.train_log_every=2", "schedule.warmup_steps=3",
            "eval.max_tokens=512", "eval.batch_tokens=512", "eval.audit_tokens=256",
            f"data.path={corpus['data_path']}", f"data.tokenizer_path={corpus['tokenizer_path']}",
            "data.train_pattern=fineweb_train_*.bin", "data.val_pattern=fineweb_val_*.bin"]
    cfg, _ = resolve_config("smoke", None, {}, base + list(sets))
    return cfg
