"""The order blocks run in: plain, or with a range of blocks looped (depth recurrence, #1344).

A schedule is a list of (block index, pass) in execution order; pass 0 is a block's first
visit, pass r > 0 its r-th repeat. With U-Net skips the first half of the schedule is the
encoder (pushes skips) and the rest the decoder (pops them), as #1855 splits its looped
order [0,1,2,3,4,5,3,4 | 5,3,4,5,6,7,8,9,10].
"""

from pgolf.config_tree import ModelConfig


def layer_schedule(cfg: ModelConfig, looping: bool) -> list[tuple[int, int]]:
    """(block, pass) in execution order; the plain stack when looping is off or inactive."""
    L = cfg.num_layers
    if not (cfg.num_loops and looping):
        return [(i, 0) for i in range(L)]
    seg = range(cfg.loop_start, cfg.loop_end + 1)
    order = [(i, 0) for i in range(cfg.loop_start)]
    for r in range(cfg.num_loops + 1):
        order += [(i, r) for i in seg]
    return order + [(i, 0) for i in range(cfg.loop_end + 1, L)]


def encoder_length(cfg: ModelConfig, schedule: list) -> int:
    """How many schedule entries push U-Net skips (0 without skips)."""
    return len(schedule) // 2 if cfg.unet_skips else 0


def num_skip_weights(cfg: ModelConfig) -> int:
    """Skip weights for the longest schedule the model can run (#1855 sizes them this way)."""
    sched = layer_schedule(cfg, looping=True)
    enc = encoder_length(cfg, sched)
    return min(enc, len(sched) - enc)


def num_loop_mlps(cfg: ModelConfig) -> int:
    """Untied MLPs of the repeated passes: one per (repeat, looped block)."""
    if not (cfg.num_loops and cfg.loop_untied_mlp):
        return 0
    return cfg.num_loops * (cfg.loop_end - cfg.loop_start + 1)


def loop_mlp_slot(cfg: ModelConfig, block: int, rep: int) -> int | None:
    """Which untied MLP a (block, pass) uses; None = the block's own."""
    if rep == 0 or not cfg.loop_untied_mlp:
        return None
    return (rep - 1) * (cfg.loop_end - cfg.loop_start + 1) + block - cfg.loop_start


def looping_due(cfg: ModelConfig, progress: float) -> bool:
    """Whether the loop runs at this fraction of training (progressive recurrence)."""
    return cfg.num_loops > 0 and progress >= cfg.loop_enable_at
