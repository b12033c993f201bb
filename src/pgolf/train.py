"""The training run: data -> model -> optimizers -> loop -> artifact -> evaluation -> metrics.

One function per phase; `train()` strings them together and owns the run folder:
log.txt, config.toml, checkpoints (ckpt_rank{r}.pt), model.ptz and metrics.json.
"""

import copy
import glob
import hashlib
import math
import os
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from pgolf.atomic import atomic_write
from pgolf.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from pgolf.config import (Config, apply_env, apply_mapping, check_world_size, config_hash, config_to_dict,
                          config_to_toml, finalize_config, read_config_file, shippable_config)
from pgolf.data.corpus import corpus_cache_root
from pgolf.data.loader import DistributedTokenLoader, check_token_range, load_validation_tokens
from pgolf.data.tokenizer import build_byte_tables, load_tokenizer
from pgolf.dist import Comm, init_comm
from pgolf.errors import TrainingError
from pgolf.interrupts import RunInterrupted, stop_on_signals
from pgolf.eval.bpb import eval_plain
from pgolf.eval.legality import audit
from pgolf.eval.runner import evaluate
from pgolf.model.attention import resolve_attention_backend
from pgolf.model.banks import rebank_state_dict, unbank_state_dict
from pgolf.model.gpt import GPT, compute_autocast, count_params
from pgolf.optim.averaging import EMA, SWA, select_export_state
from pgolf.optim.builder import build_optimizers
from pgolf.optim.schedule import lr_multiplier, muon_momentum_at
from pgolf.quant.artifact import artifact_body_cap, budget_report, check_budget, pack_artifact, read_artifact, write_artifact
from pgolf.quant.fake_quant import attach_late_qat
from pgolf.runfolder import RunFolder
from pgolf.runlog import RunLog, now_run_id, write_json_atomic, write_text_atomic
from pgolf.wallclock import AutoCheckpoints, CapSchedule, TrainClock, device_sync


class RunState:
    """Everything the loop mutates, so checkpoints and priming can save/restore it."""

    def __init__(self) -> None:
        self.step = 0
        self.train_ms = 0.0
        self.last_finite_loss = float("nan")
        self.qat_active = False


# ---------------------------------------------------------------- setup

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
    tok = d.tokenizer_path
    if not tok:
        candidates = sorted(glob.glob(os.path.join(d.path, "*.model")))
        candidates += sorted(glob.glob(os.path.join(d.path, "..", "..", "tokenizers",
                                                    f"*_{cfg.model.vocab_size}_bpe.model")))
        if not candidates:
            raise TrainingError(f"no tokenizer found beside {d.path}: set TOKENIZER_PATH "
                                "(or --set data.tokenizer_path=FILE)")
        tok = candidates[0]
    return train_glob, val_glob, tok


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


def _train_seed(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_model(cfg: Config, device: torch.device) -> GPT:
    model = GPT(cfg.model).to(device)
    model.attn_backend = resolve_attention_backend(cfg.model.attn_backend, device)
    for dtype in (torch.float32, torch.bfloat16):
        # Filled before any torch.compile trace, so compiled graphs only read the cache.
        for n in {cfg.run.train_seq_len, cfg.eval.seq_len}:
            model.rotary(n, device, dtype)
    return model


def weights_sha256(sd: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of a state dict's names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ---------------------------------------------------------------- one step

def train_step(model, fwd, opt, loader, cfg: Config, accum: int, device) -> torch.Tensor:
    """Forward/backward over `accum` micro-batches, then reduce and step. Returns the loss."""
    total = torch.zeros((), device=device)
    for _ in range(accum):
        x, y = loader.next_batch(cfg.run.train_batch_tokens, cfg.run.train_seq_len, accum)
        with compute_autocast(device):
            loss = fwd(x, y)
        (loss / accum).backward()
        total += loss.detach() / accum
    opt.reduce_and_step(model, cfg.optim.grad_clip_norm, cfg.optim.grad_clip_mode)
    return total


def set_schedule(opt, qat, cfg: Config, st: RunState, elapsed_ms: float) -> float:
    """Apply the lr multiplier, Muon momentum and late-QAT switch for the coming step."""
    r, o = cfg.run, cfg.optim
    args = (st.step, elapsed_ms, r.iterations, cfg.schedule.warmdown_iters, r.max_wallclock_seconds * 1000.0)
    mode = cfg.schedule.warmdown_mode
    if mode == "auto" and r.max_wallclock_seconds > 0:
        # Whichever budget ends first drives the warmdown: a short run that stops on
        # run.iterations long before the wall-clock cap still anneals.
        mult = min(lr_multiplier(*args, "time"), lr_multiplier(*args, "iters"))
    else:
        mult = lr_multiplier(*args, mode)
    opt.set_lr_multiplier(mult)
    opt.set_muon_momentum(muon_momentum_at(st.step, o.muon_momentum_warmup_start, o.muon_momentum,
                                           o.muon_momentum_warmup_steps))
    thr = cfg.quant.late_qat_threshold
    if qat is not None and thr > 0 and not st.qat_active and mult < thr:
        st.qat_active = True
        qat.active = True
    return mult


def prime(model, fwd, opt, loader, cfg: Config, accum: int, device, log: RunLog, qat=None) -> None:
    """Run warm-up steps to compile kernels, then restore weights, optimizer and data.

    With late QAT under torch.compile one more step runs with QAT on, so its graph is
    compiled here and the switch late in the timed run costs no compilation.
    """
    n = cfg.schedule.warmup_steps
    if n <= 0:
        return
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), loader.state())
    t0 = time.perf_counter()
    for _ in range(n):
        train_step(model, fwd, opt, loader, cfg, accum, device)
    qat_primed = qat is not None and cfg.model.compile
    if qat_primed:
        qat.active = True
        train_step(model, fwd, opt, loader, cfg, accum, device)
        qat.active = False
    device_sync(device)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    loader.load_state(saved[2])
    opt.zero_grad(set_to_none=True)
    log.event(event="priming_done", steps=n + int(qat_primed), qat_graph=qat_primed,
              seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------- the loop

def nonfinite_error(loss: float, step: int, last_finite: float, out_dir: str) -> TrainingError:
    return TrainingError(
        f"train loss is {loss} at step {step} (last finite loss {last_finite:.4f}); "
        f"lower optim.matrix_lr / optim.scalar_lr or set optim.grad_clip_norm; "
        f"log and checkpoints in {out_dir} are kept")


def check_finite(loss: float, st: RunState, out_dir: str) -> None:
    if math.isfinite(loss):
        st.last_finite_loss = loss
        return
    raise nonfinite_error(loss, st.step + 1, st.last_finite_loss, out_dir)


class LossWatch:
    """Step losses kept on the device: the first non-finite step and the last finite loss
    are tracked there, so nothing is read back to the host until a check point."""

    def __init__(self, device, last_finite: float) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), device=device)
        self.last_finite = torch.full((), last_finite, device=device)
        self.last: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        """`step` is the 1-based number of the step that produced `loss`."""
        ok = torch.isfinite(loss)
        new_bad = (self.first_bad < 0) & ~ok
        self.first_bad = torch.where(new_bad, step, self.first_bad)
        self.bad_value = torch.where(new_bad, loss, self.bad_value)
        self.last_finite = torch.where(ok & (self.first_bad < 0), loss, self.last_finite)
        self.last = loss

    def check(self, st: RunState, out_dir: str) -> None:
        """Raise on a non-finite loss seen since the start (reads the device: a sync)."""
        bad, value, last = self.first_bad.item(), self.bad_value.item(), self.last_finite.item()
        st.last_finite_loss = last
        if bad >= 0:
            raise nonfinite_error(value, bad, last, out_dir)


def log_step(log: RunLog, st: RunState, cfg: Config, loss: float, mult: float, opt,
             interval: tuple[int, float]) -> None:
    """One step line; step_ms is the mean over the steps since the previous line."""
    r = cfg.run
    avg_ms = st.train_ms / max(st.step, 1)
    step_ms = (st.train_ms - interval[1]) / max(st.step - interval[0], 1)
    left = (r.iterations - st.step) * avg_ms
    if r.max_wallclock_seconds > 0:
        left = min(left, r.max_wallclock_seconds * 1000.0 - st.train_ms)
    log.event(step=f"{st.step}/{r.iterations}", train_loss=round(loss, 4), lr_mult=round(mult, 4),
              momentum=round(opt.muon.param_groups[0]["momentum"], 4), step_ms=round(step_ms, 1),
              step_avg_ms=round(avg_ms, 1), tokens_per_s=int(r.train_batch_tokens / max(avg_ms, 1e-9) * 1000),
              train_time_s=round(st.train_ms / 1000, 1), eta_s=round(max(left, 0) / 1000, 1))


def session_step_ms(st: RunState, session: tuple[int, float]) -> float:
    return (st.train_ms - session[1]) / max(st.step - session[0], 1)


def checkpoint_due(every: int, st: RunState, auto, clock: TrainClock, session: tuple[int, float]) -> bool:
    """Whether this step writes a checkpoint (reads the clock exactly when it might)."""
    if every > 0:
        if st.step % every:
            return False
        st.train_ms = clock.elapsed_ms()
        return True
    if auto is None or not auto.due(st.step):
        return False
    st.train_ms = clock.elapsed_ms()
    return auto.check(st.step, st.train_ms, session_step_ms(st, session))


def run_loop(model, fwd, opt, loader, ema, swa, st: RunState, cfg: Config, comm: Comm, device,
             accum: int, val, log: RunLog, out_dir: str, qat=None) -> str:
    """Train until run.iterations or the wall-clock cap; returns why it stopped.

    No host sync per step: the loss stays on the device and the clock is read exactly only
    at log lines, checkpoints, validation and the cap checks `CapSchedule` spaces out.
    """
    r, s = cfg.run, cfg.schedule
    clock = TrainClock(device, st.train_ms)
    cap = CapSchedule(r.max_wallclock_seconds * 1000.0, comm, device)
    watch = LossWatch(device, st.last_finite_loss)
    session = (st.step, st.train_ms)  # steps and time before this process started
    logged = session
    fault_step = int(os.environ.get("PGOLF_FAULT_AFTER_STEP", "-1"))
    auto = AutoCheckpoints(comm, device, st.train_ms) if r.checkpoint_every < 0 else None
    if auto is not None and comm.is_main:
        log.event(event="checkpoints", mode="auto", min_interval_s=auto.min_interval_ms / 1000,
                  max_share_of_training=auto.max_share)
    clock.start()
    mult = 1.0
    while True:
        if st.step >= r.iterations:
            reason = "iterations"
            break
        if cap.due(st.step):
            st.train_ms = clock.elapsed_ms()
            watch.check(st, out_dir)
            if cap.check(st.step, st.train_ms, st.step - session[0], st.train_ms - session[1]):
                reason = "wallclock_cap"
                break
        if r.val_loss_every and st.step and st.step % r.val_loss_every == 0:
            with clock.paused():
                res = eval_plain(model, val["tokens"], cfg.eval.seq_len, cfg.eval.batch_tokens,
                                 val["tables"], comm, device)
            log.event(step=st.step, val_loss=round(res["val_loss"], 4), val_bpb=round(res["val_bpb"], 4))
        qat_before = st.qat_active
        mult = set_schedule(opt, qat, cfg, st, clock.host_ms())
        if st.qat_active and not qat_before:
            log.event(event="late_qat_on", step=st.step, lr_mult=round(mult, 4), scope=cfg.quant.qat_scope,
                      bits=cfg.quant.matrix_bits if cfg.quant.qat_scope == "matrices" else 6)
        loss = train_step(model, fwd, opt, loader, cfg, accum, device)
        st.step += 1
        watch.update(loss, st.step)
        if ema is not None:
            ema.update(model)
        if swa is not None:
            swa.maybe_snapshot(ema.shadow if swa.source == "ema" else model,
                               st.step, mult, s.swa_every, s.swa_threshold)
        if r.train_log_every and (st.step % r.train_log_every == 0 or st.step <= 5):
            st.train_ms = clock.elapsed_ms()
            watch.check(st, out_dir)
            log_step(log, st, cfg, loss.item(), mult, opt, logged)
            logged = (st.step, st.train_ms)
        if checkpoint_due(r.checkpoint_every, st, auto, clock, session):
            watch.check(st, out_dir)
            t0 = time.perf_counter()
            save_checkpoint(out_dir, comm.rank, model, opt, loader, ema, swa, st)
            write_ms = (time.perf_counter() - t0) * 1000.0
            if auto is not None:
                auto.written(st.step, st.train_ms, write_ms, session_step_ms(st, session))
            if st.step == fault_step:
                # Fault injection for resume tests: die like a preempted job, no cleanup.
                os.kill(os.getpid(), signal.SIGKILL)
    st.train_ms = clock.elapsed_ms()
    watch.check(st, out_dir)
    return reason


# ---------------------------------------------------------------- export + evaluation

def shippable_config_toml(cfg: Config) -> str:
    """The config without this machine's paths: what travels inside an artifact."""
    return config_to_toml(shippable_config(cfg))


def export_artifact(model, ema, swa, cfg: Config, code_bytes: int, out_dir: str, log: RunLog,
                    comm: Comm) -> dict[str, Any]:
    """Pick the exported weights, quantize + compress them, check the budget, write model.ptz."""
    state, label, warning = select_export_state(cfg.schedule.export_weights, model, ema, swa)
    if warning:
        log.event(event="warning", message=warning.replace(" ", "_"))
    flat = unbank_state_dict(state, model.num_layers)
    if comm.is_main:
        # Saved before anything can fail in quantization or compression: the trained
        # weights survive an export error or an over-budget refusal.
        atomic_write(Path(out_dir) / "final_state.pt", lambda f: torch.save(flat, f))
    info = {"export_weights": label, "weights_sha256": weights_sha256(flat), "state": state}
    blob = pack_artifact(flat, cfg.quant, config_hash(cfg), meta={"config_toml": shippable_config_toml(cfg)})
    report = budget_report(len(blob), code_bytes, cfg.quant.max_artifact_bytes)
    info.update(model_bytes=report["model_bytes"], code_bytes=report["code_bytes"],
                artifact_bytes=report["artifact_bytes"], budget_margin=report["margin"])
    check_budget(report, str(Path(out_dir) / "model.ptz"))
    if comm.is_main:
        write_artifact(Path(out_dir) / "model.ptz", blob, overwrite=True)
    log.event(event="artifact", export_weights=label, model_bytes=report["model_bytes"],
              code_bytes=code_bytes, artifact_bytes=report["artifact_bytes"], margin=report["margin"])
    return info


def model_from_state(cfg: Config, sd: dict[str, torch.Tensor], device) -> GPT:
    """An eval-mode model holding `sd`, banked or per-layer names alike."""
    return _load_state(build_model(cfg, device), sd, device)


def _load_state(model: GPT, sd: dict[str, torch.Tensor], device) -> GPT:
    if model.banked:
        sd = rebank_state_dict(sd, model.num_layers)
    model.load_state_dict({k: v.to(device) for k, v in sd.items()})
    return model.eval()


def load_round_trip(path: str, cfg: Config, device) -> GPT:
    """The model evaluation always uses: de-quantized from the artifact on disk.

    The artifact may decompress to no more than a model of this config can need, so a
    crafted file cannot balloon memory before it is rejected.
    """
    model = build_model(cfg, device)
    cap = artifact_body_cap(count_params(model))
    return _load_state(model, read_artifact(path, max_body_bytes=cap)[0], device)


def final_evaluation(cfg: Config, state: dict, artifact: str, val: dict, comm: Comm, device,
                     log: RunLog) -> dict[str, Any]:
    """Plain bpb before/after quantization, then the configured eval mode and its audit."""
    pre = model_from_state(cfg, state, device)
    ec = cfg.eval
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    before = eval_plain(pre, val["tokens"], ec.seq_len, ec.batch_tokens, val["tables"], comm, device, log.line)
    del pre
    model = load_round_trip(artifact, cfg, device)
    after = eval_plain(model, val["tokens"], ec.seq_len, ec.batch_tokens, val["tables"], comm, device, log.line)
    phases["quant_check_s"] = time.perf_counter() - t0
    log.event(event="quant_round_trip", pre_quant_val_bpb=round(before["val_bpb"], 5),
              post_quant_val_bpb=round(after["val_bpb"], 5),
              quant_penalty_bpb=round(after["val_bpb"] - before["val_bpb"], 5))
    res = evaluate(model, val["tokens"], val["tables"], ec, comm, device, log.line, compile=cfg.model.compile)
    phases["final_eval_s"] = res["eval_seconds"]
    phases.update({f"ttt_{k}": res[k] for k in ("score_seconds", "train_seconds") if k in res})
    out = {"val_loss": res["val_loss"], "val_bpb": res["val_bpb"], "eval_mode": res["mode"],
           "eval_causal": res["causal"], "eval_seconds": res["eval_seconds"],
           "pre_quant_val_bpb": before["val_bpb"], "post_quant_plain_val_bpb": after["val_bpb"],
           "quant_penalty_bpb": after["val_bpb"] - before["val_bpb"]}
    if ec.audit:
        t0 = time.perf_counter()
        # The normalization check costs one eval per vocabulary id: on demand (`pgolf audit`).
        report = audit(model, val["tokens"], res["mode"], ec, val["tables"], device, normalization=False,
                       progress=log.line)
        phases["audit_s"] = time.perf_counter() - t0
        log.line(report.summary())
        out.update(legal=bool(report.ok and res["causal"]),
                   audit={"causality": report.causality, "once": report.once,
                          "score_before_update": report.score_before_update})
    else:
        out.update(legal=None, audit="skipped (eval.audit=false)")
    out["eval_phase_seconds"] = phases
    log.event(event="eval_time", **{k: round(v, 2) for k, v in phases.items()}, budget_s=ec.budget_seconds)
    log.event(event="final", val_loss=round(res["val_loss"], 5), val_bpb=round(res["val_bpb"], 5),
              mode=res["mode"], legal=out["legal"])
    return out


# ---------------------------------------------------------------- the run

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


def load_val(cfg: Config, device) -> dict[str, Any]:
    _, val_glob, tok_path = resolve_data_paths(cfg)
    sp = load_tokenizer(tok_path, cfg.model.vocab_size)
    tokens = load_validation_tokens(val_glob, cfg.eval.seq_len)
    check_token_range(tokens.numpy(), cfg.model.vocab_size, f"validation shards {val_glob}")
    if cfg.eval.max_tokens and tokens.numel() - 1 > cfg.eval.max_tokens:
        n = (cfg.eval.max_tokens // cfg.eval.seq_len) * cfg.eval.seq_len
        tokens = tokens[:n + 1]
    return {"tokens": tokens, "tables": build_byte_tables(sp, cfg.model.vocab_size), "tokenizer": tok_path}


def train(cfg: Config, out_dir: str = "", code_bytes: int = 0, resume: bool = False,
          warnings: list[str] | None = None) -> dict[str, Any]:
    """Train, export and evaluate one run; returns (and writes) its metrics."""
    comm = init_comm(cfg.run.device)
    try:
        check_world_size(cfg, comm.world_size)
        # Bad data fails here, before a run folder exists that would block a retry with --out.
        val = load_val(cfg, comm.device)
        folder = claim_run_folder(cfg, out_dir, resume, comm)
        # A resume that cannot load its checkpoint fails before the log is opened: the
        # folder of a finished or broken run is then really left untouched.
        blob = load_checkpoint(str(folder.path), comm.rank, comm) if resume else None
        return _train_in_folder(cfg, folder, code_bytes, blob, warnings or [], comm, val)
    finally:
        comm.close()


def _train_in_folder(cfg, folder: RunFolder, code_bytes, blob, warnings, comm, val) -> dict[str, Any]:
    log = RunLog(os.path.join(folder.path, "log.txt"), enabled=comm.is_main)
    try:
        with stop_on_signals(str(folder.path)):
            metrics = _train_run(cfg, folder, code_bytes, blob, warnings, comm, comm.device, log, val)
    except BaseException:
        log.close()
        folder.discard_if_unstarted()
        raise
    log.close()
    folder.mark("done")
    return metrics


def _train_run(cfg, folder, code_bytes, blob, warnings, comm, device, log, val) -> dict[str, Any]:
    t_start = time.perf_counter()
    out_dir, resume = str(folder.path), blob is not None
    if comm.is_main and not resume:
        write_text_atomic(os.path.join(out_dir, "config.toml"), config_to_toml(cfg))
    for w in warnings:
        log.event(event="warning", message=w.replace(" ", "_"))
    for section, values in config_to_dict(cfg).items():
        log.event(event="config", section=section, **{k: str(v).replace(" ", "_") for k, v in values.items()})
    _train_seed(cfg.run.seed)
    train_glob, val_glob, _ = resolve_data_paths(cfg)
    model = build_model(cfg, device)
    qat = None
    if cfg.quant.late_qat_threshold > 0:
        qat = attach_late_qat(model, cfg.quant.matrix_bits, cfg.quant.qat_scope)
    fwd = torch.compile(model, dynamic=False, fullgraph=True) if cfg.model.compile else model
    opt = build_optimizers(model, cfg.optim, comm, compile_ns=cfg.model.compile)
    loader = DistributedTokenLoader(train_glob, comm.rank, comm.world_size, device, val_pattern=val_glob,
                                    vocab_size=cfg.model.vocab_size)
    accum = cfg.run.accum_world // comm.world_size
    log.event(event="run", out_dir=out_dir, params=count_params(model), arch=cfg.model.arch,
              attn_backend=model.attn_backend, world_size=comm.world_size, grad_accum=accum,
              device=device_label(device).replace(" ", "_"), val_tokens=val["tokens"].numel() - 1,
              config_hash=config_hash(cfg))
    st = RunState()
    ema = EMA(model, cfg.schedule.ema_decay) if cfg.schedule.ema_enabled else None
    swa = SWA("ema" if cfg.schedule.export_weights == "ema_swa" else "raw") if cfg.schedule.swa_enabled else None
    if resume:
        restore_checkpoint(blob, model, opt, loader, ema, swa, st, qat)
        log.event(event="resumed", step=st.step, train_time_s=round(st.train_ms / 1000, 1))
    else:
        prime(model, fwd, opt, loader, cfg, accum, device, log, qat)
    folder.mark("training")
    try:
        reason = run_loop(model, fwd, opt, loader, ema, swa, st, cfg, comm, device, accum, val, log, out_dir, qat)
    except TrainingError as e:
        reason = "signal" if isinstance(e, RunInterrupted) else "error"
        log.event(event="train_stopped", reason=reason, step=st.step, message=str(e).replace(" ", "_"))
        raise
    log.event(event="train_done", reason=reason, steps=st.step, train_time_s=round(st.train_ms / 1000, 2),
              swa_snapshots=swa.count if swa else 0)
    info = export_artifact(model, ema, swa, cfg, code_bytes, out_dir, log, comm)
    state = info.pop("state")
    if comm.world_size > 1:
        comm.barrier()
    ev = final_evaluation(cfg, state, os.path.join(out_dir, "model.ptz"), val, comm, device, log)
    avg_ms = st.train_ms / max(st.step, 1)
    metrics = {
        **ev, **info, "steps": st.step, "stop_reason": reason, "train_time_s": st.train_ms / 1000.0, "step_avg_ms": avg_ms,
        "tokens_per_s": cfg.run.train_batch_tokens / max(avg_ms, 1e-9) * 1000.0,
        "world_size": comm.world_size, "device": device_label(device), "params": count_params(model),
        "config_hash": config_hash(cfg), "seed": cfg.run.seed, "data_path": cfg.data.path,
        "tokenizer_path": val["tokenizer"], "wall_time_s": time.perf_counter() - t_start,
    }
    bad = [k for k in ("val_bpb", "val_loss", "pre_quant_val_bpb", "post_quant_plain_val_bpb")
           if not math.isfinite(metrics[k])]
    if bad:
        # A non-finite score is a failed run: never legal, never exportable, and JSON has
        # no NaN, so such values are written as null.
        metrics.update(legal=False, failed=f"non-finite {', '.join(bad)}")
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    if comm.is_main:
        write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    if bad:
        log.event(event="run_failed", reason="non_finite_metric", fields=",".join(bad))
        raise TrainingError(f"{', '.join(bad)} is not finite after quantization/evaluation; the run failed "
                            f"(metrics.json marks it, final_state.pt keeps the float weights in {out_dir}): "
                            "check quant.* settings or the training loss")
    return metrics


def resume_config(out_dir: str) -> Config:
    path = Path(out_dir) / "config.toml"
    if not path.is_file():
        raise TrainingError(f"{out_dir} has no config.toml: it is not a pgolf run folder")
    return read_config_file(path)


def bundle_main(preset_text: str, code_path: str = "") -> dict[str, Any]:
    """Entry point of a generated train_gpt.py: preset defaults, reference env vars on top."""
    cfg = Config()
    apply_mapping(cfg, tomllib.loads(preset_text), "bundled preset")
    warnings = apply_env(cfg, dict(os.environ))
    finalize_config(cfg)
    code_bytes = os.path.getsize(code_path) if code_path else 0
    metrics = train(cfg, code_bytes=code_bytes, warnings=warnings)
    print(f"val_bpb:{metrics['val_bpb']:.8f} val_loss:{metrics['val_loss']:.8f} "
          f"artifact_bytes:{metrics['artifact_bytes']}", flush=True)
    return metrics
