"""The entry point of a lean train_gpt.py (quant.code_lean): it runs the config it was built for.

`pgolf bundle` checked that config and specialized the code to it (bundle.freeze), so the
file holds no config parsing or checks, and no code for branches the config never takes.
The environment may still say where the run lives, its seed and its device (DATA_PATH,
TOKENIZER_PATH, RUN_ID, SEED, PGOLF_RUN_DEVICE), as the challenge's runs and pgolf's exported
README do; a variable that would change anything else stops the run before any work, in one line.
"""

import os
from typing import Any

from pgolf.config import ENV_MAP, ENV_SPECIAL, PGOLF_KNOBS, ConfigError
from pgolf.config_tree import Config
from pgolf.run import one_line_errors, print_summary, shipped_code, train

# Variables a frozen run reads (bundle.freeze.RUNTIME_FIELDS never freezes their fields).
RUNTIME_ENV = ("DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "SEED", "PGOLF_RUN_DEVICE")
RUN_DEVICES = ("auto", "cpu", "cuda")


def _same(raw: str, value: Any) -> bool:
    """Whether an environment string asks for the frozen value (`TTT_ENABLED=1` for True)."""
    if isinstance(value, bool):
        return raw.strip().lower() in (("1", "true", "yes", "on") if value else ("0", "false", "no", "off"))
    if isinstance(value, (int, float)):
        try:
            return float(raw) == value
        except ValueError:
            return False
    return raw == str(value)


def frozen_env(cfg: Config, env: dict[str, str]) -> None:
    """Set the runtime fields from `env`; ConfigError naming every other variable that asks
    for a value the frozen config does not have."""
    changed = []
    for name, raw in sorted(env.items()):
        if name in RUNTIME_ENV or name in PGOLF_KNOBS:
            continue
        if name in ENV_MAP:
            section, field = ENV_MAP[name].split(".")
            if not _same(raw, getattr(getattr(cfg, section), field)):
                changed.append(f"{name}={raw}")
        elif name in ENV_SPECIAL or name.startswith("PGOLF_"):
            changed.append(f"{name}={raw}")
    if changed:
        raise ConfigError(f"this train_gpt.py runs the config it was generated for (quant.code_lean) and the "
                          f"environment changes it ({', '.join(changed)}): unset it, or regenerate the file with "
                          "`pgolf bundle` for the config you want (only DATA_PATH, TOKENIZER_PATH, RUN_ID, SEED and "
                          "PGOLF_RUN_DEVICE apply)")
    if "SEED" in env:
        try:
            cfg.run.seed = int(env["SEED"])
        except ValueError:
            raise ConfigError(f"SEED={env['SEED']!r} is not an integer; set SEED to a whole number") from None
    device = env.get("PGOLF_RUN_DEVICE", cfg.run.device)
    if device not in RUN_DEVICES:
        raise ConfigError(f"PGOLF_RUN_DEVICE={device!r}: use one of {', '.join(RUN_DEVICES)}")
    cfg.run.device = device
    cfg.data.path = env.get("DATA_PATH", cfg.data.path)
    cfg.data.tokenizer_path = env.get("TOKENIZER_PATH", cfg.data.tokenizer_path)
    cfg.run.run_id = env.get("RUN_ID", cfg.run.run_id)


def lean_main(cfg: Config, code_path: str = "") -> dict[str, Any]:
    """Entry point of a lean train_gpt.py; `cfg` is its frozen config."""
    return one_line_errors(_lean_run, cfg, code_path)


def _lean_run(cfg: Config, code_path: str) -> dict[str, Any]:
    frozen_env(cfg, dict(os.environ))
    code_files, code_bytes = shipped_code(code_path)
    metrics = train(cfg, code_bytes=code_bytes, code_files=code_files, signals=False)
    print_summary(metrics)
    return metrics
