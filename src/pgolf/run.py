"""One run, start to finish: claim the folder, build, train, export, evaluate, write
metrics. The entry point of `pgolf train` and of a generated train_gpt.py (bundle_main)."""

import contextlib
import hashlib
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pgolf.checkpoint import load_checkpoint, restore_checkpoint
from pgolf.config import (MACHINE_FIELDS, apply_env, apply_mapping, check_world_size, config_differences,
                          config_from_toml, config_hash, config_to_dict, finalize_config)
from pgolf.config_tree import Config
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.paths import ValData, load_val, resolve_data_paths
from pgolf.dist import Comm, init_comm
from pgolf.errors import PgolfError, TrainingError
from pgolf.eval.final import final_evaluation
from pgolf.hw import choose_precision, device_label, maybe_compile
from pgolf.interrupts import RunInterrupted, stop_on_signals
from pgolf.model.build import build_model
from pgolf.model.gpt import count_params
from pgolf.model.stack import looping_due
from pgolf.optim.averaging import EMA, SWA
from pgolf.optim.builder import build_optimizers
from pgolf.parts import check_parts_shipped
from pgolf.quant.export import export_artifact, export_weights
from pgolf.quant.fake_quant import attach_late_qat
from pgolf.quant.pergroup import pergroup_setup
from pgolf.runfolder import RUN_CONFIG, RunFolder, open_run
from pgolf.runlog import RunLog, now_run_id
from pgolf.train import RunState, prime, run_loop


def _train_seed(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def claim_run_folder(cfg: Config, out_dir: str, resume: bool, comm: Comm) -> RunFolder:
    """Rank 0 claims the folder (or checks it for --resume); every rank learns the verdict,
    so a refusal never leaves the other ranks waiting in a collective."""
    path = out_dir or cfg.run.out_dir or os.path.join("runs", cfg.run.run_id or now_run_id())
    folder, error = None, None
    if comm.is_main:
        try:
            folder = RunFolder.open_existing(path) if resume else RunFolder.claim_new(path)
        except TrainingError as e:
            error = e
    failed = torch.tensor(float(error is not None), device=comm.device)
    comm.all_reduce_max(failed)
    if error is not None:
        raise error
    if failed.item():
        raise TrainingError(f"rank 0 could not set up run folder {path}; see its error")
    return folder or RunFolder(Path(path), created=False, writer=False)


@dataclass
class RunSpec:
    """What one run is given: its config, folder, world, data and optional extras."""

    cfg: Config
    folder: RunFolder
    comm: Comm
    val: ValData
    code_bytes: int = 0
    checkpoint: dict | None = None  # set when resuming
    warnings: list[str] = field(default_factory=list)
    auditor: Callable | None = None  # pgolf.eval.legality.audit, when the caller has it
    code_files: dict[str, str] = field(default_factory=dict)  # shipped code, logged so the log is the record
    sinks: Callable | None = None  # run_dir -> event sinks (trackers)

    @property
    def out_dir(self) -> str:
        return str(self.folder.path)


def train(cfg: Config, out_dir: str = "", code_bytes: int = 0, resume: bool = False,
          warnings: list[str] | None = None, auditor: Callable | None = None,
          code_files: dict[str, str] | None = None, sinks: Callable | None = None,
          signals: bool = True) -> dict[str, Any]:
    """Train, export and evaluate one run; returns (and writes) its metrics.

    The optional extras come from the caller so the bundled script needs none of them:
    `auditor` (the legality audit), `code_files` (the shipped source, logged), `sinks`
    (run_dir -> callables that receive every log event: trackers). `signals`: SIGINT/SIGTERM
    end the run cleanly (a lean train_gpt.py, which ships without that part, passes False).
    """
    missing, fallback = pergroup_setup(cfg.quant) if cfg.quant.compressor == "pergroup" else (None, None)
    if missing:  # a program the export needs: refuse now, not after ten minutes of training
        raise TrainingError(missing)
    warnings = (warnings or []) + ([fallback] if fallback else [])
    comm = init_comm(cfg.run.device, cfg.run.collective_timeout_seconds)
    try:
        check_world_size(cfg, comm.world_size)
        # Bad data fails here, before a run folder exists that would block a retry with --out.
        val = load_val(cfg, comm.device)
        folder = claim_run_folder(cfg, out_dir, resume, comm)
        try:
            # A resume that cannot load its checkpoint fails before the log is opened: the
            # folder of a finished or broken run is then really left untouched.
            blob = load_checkpoint(str(folder.path), comm.rank, comm) if resume else None
            if blob is not None:
                warnings += resume_edits(cfg, blob, folder.config)
        except BaseException:
            folder.release()
            raise
        spec = RunSpec(cfg, folder, comm, val, code_bytes, blob, warnings, auditor, code_files or {}, sinks)
        return _train_in_folder(spec, signals)
    except RuntimeError as e:
        timed_out = collective_timeout_error(e, comm.rank, comm.world_size, cfg.run.collective_timeout_seconds)
        if timed_out is not None:
            raise timed_out from e
        raise
    finally:
        comm.close()


def collective_timeout_error(e: RuntimeError, rank: int, world: int, timeout_s: float) -> TrainingError | None:
    """gloo's "Timed out waiting ..." / NCCL's watchdog timeout as a one-line run error."""
    if world <= 1 or "timed out" not in str(e).lower().replace("timeout", "timed out"):
        return None
    return TrainingError(f"rank {rank}: a collective waited over run.collective_timeout_seconds={timeout_s:g}: "
                         "another rank died or hangs (see its log); the last complete checkpoint resumes with --resume")


def _train_in_folder(spec: RunSpec, signals: bool) -> dict[str, Any]:
    sinks = spec.sinks(spec.out_dir) if spec.sinks is not None and spec.comm.is_main else ()
    log = RunLog(str(spec.folder.log), enabled=spec.comm.is_main, sinks=sinks)
    try:
        with stop_on_signals(spec.out_dir) if signals else contextlib.nullcontext():
            metrics = _run(spec, log)
    except BaseException:
        log.close()
        spec.folder.discard_if_unstarted()
        raise
    log.close()
    spec.folder.mark("done")
    if not spec.cfg.run.keep_checkpoints:
        spec.folder.remove_checkpoints(spec.comm.rank)
    spec.folder.release()
    return metrics


def _log_setup(spec: RunSpec, log: RunLog) -> None:
    counted = spec.code_files.get("train_gpt.py")
    if counted is not None:
        # modded-nanogpt prints its own source into the log, so every log is a complete
        # record; the readable file when the counted one is its self-extracting form.
        raw = counted.encode("utf-8")
        readable = spec.code_files.get("train_gpt_readable.py", counted)
        log.event(event="code", sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw), form=spec.cfg.quant.code_form)
        if log.fh:  # the file only: 300 KB of source is no stdout line nor a tracker event
            log.fh.write(f"=== shipped train_gpt.py ===\n{readable.rstrip()}\n=== shipped train_gpt.py ===\n")
            log.fh.flush()
    if spec.checkpoint is None:
        spec.folder.write_config(spec.cfg)
    for w in spec.warnings:
        log.event(event="warning", message=w.replace(" ", "_"))
    for section, values in config_to_dict(spec.cfg).items():
        log.event(event="config", section=section, **{k: str(v).replace(" ", "_") for k, v in values.items()})


def _run(spec: RunSpec, log: RunLog) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg, comm, device = spec.cfg, spec.comm, spec.comm.device
    _log_setup(spec, log)
    _train_seed(cfg.run.seed)
    train_glob, val_glob, _ = resolve_data_paths(cfg)
    precision = choose_precision(cfg.run.low_precision, device)
    log.event(event="precision", **precision.fields(cfg.model.embed_dtype))
    model = build_model(cfg, device, precision)
    model.looping_active = looping_due(cfg.model, 0.0)  # progressive recurrence starts unlooped
    qat = None
    if cfg.quant.late_qat_threshold > 0:
        qat = attach_late_qat(model, cfg.quant.matrix_bits, cfg.quant.qat_scope)
    fwd = maybe_compile(model, cfg.model.compile)
    opt = build_optimizers(model, cfg.optim, comm, compile_ns=cfg.model.compile, precision=precision)
    loader = DistributedTokenLoader(train_glob, comm.rank, comm.world_size, device, val_pattern=val_glob,
                                    vocab_size=cfg.model.vocab_size, sampling=cfg.data.sampling, seed=cfg.run.seed,
                                    packing=cfg.data.packing, bos_id=cfg.model.bos_id)
    accum = cfg.run.accum_world // comm.world_size
    log.event(event="run", out_dir=spec.out_dir, params=count_params(model), arch=cfg.model.arch,
              attn_backend=model.attn_backend, world_size=comm.world_size, grad_accum=accum,
              device=device_label(device).replace(" ", "_"), val_tokens=spec.val.tokens.numel() - 1,
              config_hash=config_hash(cfg))
    st = RunState()
    ema = EMA(model, cfg.schedule.ema_decay, cfg.schedule.ema_form) if cfg.schedule.ema_enabled else None
    swa = SWA("ema" if cfg.schedule.export_weights == "ema_swa" else "raw") if cfg.schedule.swa_enabled else None
    if spec.checkpoint is not None:
        restore_checkpoint(spec.checkpoint, model, opt, loader, ema, swa, st, qat)
        log.event(event="resumed", step=st.step, train_time_s=round(st.train_ms / 1000, 1))
    else:
        prime(model, fwd, opt, loader, cfg, accum, device, log, qat)
    spec.folder.mark("training")
    try:
        reason = run_loop(model, fwd, opt, loader, ema, swa, st, cfg, comm, device, accum, spec.val, log,
                          spec.out_dir, qat)
    except TrainingError as e:
        why = "signal" if isinstance(e, RunInterrupted) else "error"
        log.event(event="train_stopped", reason=why, step=st.step, message=str(e).replace(" ", "_"))
        raise
    stopped_early = st.step < cfg.run.iterations
    log.event(event="train_done", reason=reason, steps=st.step, planned=cfg.run.iterations,
              stopped_early=stopped_early, train_time_s=round(st.train_ms / 1000, 2),
              swa_snapshots=swa.count if swa else 0)
    if stopped_early:
        log.event(event="warning", message=f"training_stopped_at_step_{st.step}_of_{cfg.run.iterations}_({reason})")
    state, label, flat = export_weights(model, ema, swa, cfg, log)
    # Saved before anything can fail in quantization or compression: the trained weights
    # survive an export error or an over-budget refusal.
    spec.folder.write_final_state(flat)
    exported = export_artifact(state, label, flat, cfg, spec.code_bytes, device, log, str(spec.folder.artifact))
    spec.folder.write_artifact(exported.blob)
    if comm.world_size > 1:
        comm.barrier()
    ev = final_evaluation(cfg, exported.state, str(spec.folder.artifact), spec.val, comm,
                          device, log, spec.auditor)
    avg_ms = st.train_ms / max(st.step, 1)
    metrics = {
        **ev, **exported.metrics(), "steps": st.step, "steps_planned": cfg.run.iterations,
        "stopped_early": stopped_early, "stop_reason": reason, "train_time_s": st.train_ms / 1000.0,
        "step_avg_ms": avg_ms, "tokens_per_s": cfg.run.train_batch_tokens / max(avg_ms, 1e-9) * 1000.0,
        "world_size": comm.world_size, "device": device_label(device), "params": count_params(model),
        "config_hash": config_hash(cfg), "seed": cfg.run.seed, "data_path": cfg.data.path,
        "tokenizer_path": spec.val.tokenizer, "wall_time_s": time.perf_counter() - t_start,
        "out_dir": spec.out_dir,
    }
    return _write_metrics(metrics, spec, log)


def _write_metrics(metrics: dict[str, Any], spec: RunSpec, log: RunLog) -> dict[str, Any]:
    bad = [k for k in ("val_bpb", "val_loss", "pre_quant_val_bpb", "post_quant_plain_val_bpb")
           if not math.isfinite(metrics[k])]
    if bad:
        # A non-finite score is a failed run: never legal, never exportable, and JSON has
        # no NaN, so such values are written as null.
        metrics.update(legal=False, failed=f"non-finite {', '.join(bad)}")
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    spec.folder.write_metrics(metrics)
    if bad:
        log.event(event="run_failed", reason="non_finite_metric", fields=",".join(bad))
        raise TrainingError(f"{', '.join(bad)} is not finite after quantization/evaluation; the run failed "
                            f"(metrics.json marks it, final_state.pt keeps the float weights in {spec.out_dir}): "
                            "check quant.* settings or the training loss")
    return metrics


# Edits of config.toml that a resume may apply: where things live, how long to wait, what to
# log to, and the final evaluation; none of them changes a training step.
RESUME_SAFE_PREFIXES = (*MACHINE_FIELDS, "run.collective_timeout_seconds", "run.trackers", "eval.")


def resume_edits(cfg: Config, blob: dict, config_file: Path) -> list[str]:
    """Compare the run's config.toml (`cfg`) with the config its checkpoint was trained with:
    refuse edits that would change training, naming them; return warnings for the rest."""
    saved_text = blob.get("config_toml")
    if not saved_text:
        return ["the checkpoint predates config checks: edits of config.toml since it was written go unnoticed"]
    fields = config_differences(config_from_toml(saved_text), cfg)
    unsafe = [f for f in fields if not f.startswith(RESUME_SAFE_PREFIXES)]
    if unsafe:
        raise TrainingError(f"{config_file} was edited after the checkpoint ({', '.join(unsafe)}): a resume continues "
                            "the run as it was trained; undo the edit, or start a new run with --out (nothing was changed)")
    return [f"{RUN_CONFIG} edits applied on resume: {', '.join(fields)}"] if fields else []


def stopped_note(metrics: dict[str, Any]) -> str:
    """" stopped_early:S/N(reason)" for a run's summary line when it did not make its planned steps."""
    if not metrics.get("stopped_early"):
        return ""
    return f" stopped_early:{metrics['steps']}/{metrics['steps_planned']}({metrics['stop_reason']})"


def resume_config(out_dir: str) -> Config:
    return open_run(out_dir, needs=(RUN_CONFIG,)).config


def bundle_main(preset_text: str, code_path: str = "", shipped_parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Entry point of a generated train_gpt.py: preset defaults, reference env vars on top;
    refuses a config that needs an optional part the file was generated without."""
    return one_line_errors(_bundle_run, preset_text, code_path, shipped_parts)


def one_line_errors(main: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a train_gpt.py entry: a user error ends the process with one line on stderr and
    status 2 (PGOLF_TRACEBACK=1 shows it all), as `pgolf train` does."""
    try:
        return main(*args)
    except PgolfError as e:
        if os.environ.get("PGOLF_TRACEBACK"):
            raise
        print(f"train_gpt.py: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum if isinstance(e, RunInterrupted) else 2) from None


def shipped_code(code_path: str) -> tuple[dict[str, str], int]:
    """The running train_gpt.py (and the readable file a self-extracting one names beside it),
    logged as the record of the run, and its counted bytes."""
    if not code_path:
        return {}, 0
    code = Path(code_path)
    files = {"train_gpt.py": code.read_text(encoding="utf-8")}
    readable = code.with_name("train_gpt_readable.py")
    if readable.is_file() and readable != code:
        files[readable.name] = readable.read_text(encoding="utf-8")
    return files, os.path.getsize(code_path)


def print_summary(metrics: dict[str, Any]) -> None:
    print(f"val_bpb:{metrics['val_bpb']:.8f} val_loss:{metrics['val_loss']:.8f} "
          f"artifact_bytes:{metrics['artifact_bytes']}{stopped_note(metrics)}", flush=True)


def _bundle_run(preset_text: str, code_path: str, shipped_parts: tuple[str, ...] | None) -> dict[str, Any]:
    cfg = Config()
    apply_mapping(cfg, tomllib.loads(preset_text), "bundled preset")
    warnings = apply_env(cfg, dict(os.environ))
    finalize_config(cfg)
    if shipped_parts is not None:
        check_parts_shipped(cfg, shipped_parts)
    code_files, code_bytes = shipped_code(code_path)
    metrics = train(cfg, code_bytes=code_bytes, warnings=warnings, code_files=code_files)
    print_summary(metrics)
    return metrics
