"""Legality audit: empirical checks of conditions 1, 3 and 4 for any eval mode.

On a small slice of validation tokens (with a shrunken config so it runs in seconds):
- causality (1): replace every token from position j on by another id and rerun the whole
  eval; no target at a token position < j may change its NLL (target j itself reads the
  replaced token, excluded). Positions j include window and chunk boundaries, the first and
  the last token. Replacing the whole future, not one token, moves a leak's NLL by orders of
  magnitude more: batch SLOT's delta then sees many changed targets, not one of hundreds.
- score_before_update (3, TTT modes): in the event log every trained range, and the token
  just before it (its first input), was scored earlier.
- once (4): every target is scored exactly once.
- normalized (2, and the blind spot of the perturbation test, which must skip the replaced
  target itself): on the stream cut one token after j0, set token j0 to every vocabulary id in
  turn; the probabilities exp(-NLL) of target j0 must sum to 1. A scorer whose
  distribution for token j0 looks at token j0 (a model peeking at its target, batch SLOT)
  breaks the sum. Costs one eval of ~j0 tokens per vocabulary id (normalization=False skips).
  Batch SLOT breaks it only by what one target moves its delta, far below float32 rounding:
  the float64 audit sees it (tested), a float32 one (precision="native") may not.

The margin. The built-in evaluator runs on a float64 copy of the model on the CPU
(precision="float64", the default): no autocast, no TF32, no bf16 kernels, and NLLs kept in
float64 end to end (pgolf.hw.at_least_fp32). Rerunning the unchanged slice measures the
noise (0 on CPU); the tolerance is max(atol, 4 * noise) with atol 1e-9 in float64 (1e-6 for
precision="native", float32 NLLs), and the report gives each check's margin: for a FAIL
max|dNLL| / tolerance, for a PASS the largest |dNLL| seen beside the tolerance.
The self-test (self_test=True, the default with a model): batch SLOT, known to leak, goes
through the same causality check on the same slice first (one base eval and one perturbed
eval, at the middle position); unless it fails by >= SELF_TEST_MARGIN x the tolerance the
audit's verdict is FAIL whatever the audited mode gave, so a broken check cannot pass a mode.
Runs in one process (Comm()); the same model is reused, TTT copies it internally.
"""

import copy
import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from pgolf.config_tree import EvalConfig
from pgolf.dist import Comm
from pgolf.eval.bpb import ScoreRecorder, as_byte_tables, val_tokens_tensor
from pgolf.eval.runner import EvalMode, evaluate
from pgolf.eval.sliding import plan_windows
from pgolf.eval.ttt import ttt_chunk_bounds, ttt_chunk_windows
from pgolf.progress import Progress


SELF_TEST_MARGIN = 100.0  # batch SLOT must fail causality by at least this x the tolerance
AUDIT_ATOL = {"float64": 1e-9, "native": 1e-6}  # NLL tolerance floor; float32 NLLs round at ~5e-7
AUDIT_NORM_TOL = {"float64": 1e-9, "native": 1e-3}


@dataclasses.dataclass
class CausalityResult:
    """One run of the causality check: verdict, where it failed, and the largest |dNLL| seen
    at a target before the perturbed position, over every position checked."""

    verdict: str
    detail: str
    max_delta: float
    tolerance: float

    @property
    def margin(self) -> float:
        return self.max_delta / self.tolerance if self.tolerance > 0 else float("inf")

    def margin_text(self) -> str:
        if self.verdict == "FAIL":
            return f"margin={self.margin:.3g}x (max|dNLL|={self.max_delta:.2e} / tolerance={self.tolerance:.1e})"
        return f"max|dNLL|={self.max_delta:.2e} <= tolerance={self.tolerance:.1e}"


@dataclasses.dataclass
class AuditReport:
    """Verdicts are PASS, FAIL or n/a; details say where a check failed. self_test is the
    batch-SLOT canary (FAIL there makes the whole audit FAIL), causality_max_delta the
    largest |dNLL| the causality check saw, norm_deviation |sum p - 1| of the normalization check."""

    mode: str
    causality: str
    causality_detail: str
    once: str
    once_detail: str
    score_before_update: str
    sbu_detail: str
    normalized: str
    normalized_detail: str
    positions: list
    tolerance: float
    noise: float
    val_bpb: float
    causal_label: bool
    precision: str = "native"
    causality_max_delta: float = 0.0
    self_test: str = "n/a"
    self_test_detail: str = ""
    self_test_margin: float = float("nan")
    norm_deviation: float = float("nan")
    norm_tol: float = 0.0

    @property
    def causality_margin(self) -> float:
        """max|dNLL| / tolerance: > 1 is a FAIL; a defended FAIL is >= SELF_TEST_MARGIN."""
        return self.causality_max_delta / self.tolerance if self.tolerance > 0 else float("inf")

    @property
    def ok(self) -> bool:
        return all(v != "FAIL" for v in (self.causality, self.once, self.score_before_update,
                                          self.normalized, self.self_test))

    def summary(self) -> str:
        def part(name: str, verdict: str, detail: str) -> str:
            return f"{name}={verdict}" + (f" ({detail})" if detail and verdict == "FAIL" else "")
        tag = "" if self.causal_label else " [NON-CAUSAL batch SLOT]"
        lines = [f"audit mode={self.mode}{tag} " + " ".join((
            part("causality", self.causality, self.causality_detail),
            part("once", self.once, self.once_detail),
            part("score_before_update", self.score_before_update, self.sbu_detail),
            part("normalized", self.normalized, self.normalized_detail),
            part("self_test", self.self_test, self.self_test_detail)))]
        lines.append(f"audit mode={self.mode} positions={self.positions} tolerance={self.tolerance:.1e} "
                     f"noise={self.noise:.1e} precision={self.precision} slice_bpb={self.val_bpb:.6f} verdict="
                     f"{'PASS' if self.ok else 'FAIL'}")
        cause = CausalityResult(self.causality, "", self.causality_max_delta, self.tolerance)
        lines.append(f"audit mode={self.mode} causality margin: {cause.margin_text()}")
        if self.self_test != "n/a":
            lines.append(f"audit mode={self.mode} self_test: batch SLOT caught with margin="
                         f"{self.self_test_margin:.3g}x (required >= {SELF_TEST_MARGIN:g}x)")
        if self.normalized != "n/a":
            dev, tol = self.norm_deviation, self.norm_tol
            lines.append(f"audit mode={self.mode} normalization: " + (
                f"margin={dev / tol:.3g}x (|sum p - 1|={dev:.2e} / tolerance={tol:.1e})" if self.normalized == "FAIL"
                else f"|sum p - 1|={dev:.2e} <= tolerance={tol:.1e}"))
        return "\n".join(lines)


def audit_eval_config(ecfg: EvalConfig, n_targets: int, fast: bool = True) -> EvalConfig:
    """Shrink windows/chunks so the slice has several windows and >= 3 TTT chunks."""
    seq_len = max(2, min(ecfg.seq_len, max(8, n_targets // 4)))
    stride = min(ecfg.stride, max(1, seq_len // 4)) if ecfg.stride > 0 else 0
    return dataclasses.replace(
        ecfg, seq_len=seq_len, stride=stride, max_tokens=0, budget_seconds=0.0,
        batch_seqs=max(1, min(ecfg.batch_seqs, 8)), ttt_batch_seqs=max(1, min(ecfg.ttt_batch_seqs, 4)),
        ttt_chunk_tokens=max(seq_len, n_targets // 4),
        ttt_epochs=min(ecfg.ttt_epochs, 1) if fast else ecfg.ttt_epochs,
        # A phase boundary inside the slice, so phased TTT's global SGD is audited too.
        ttt_phased_prefix_docs=min(ecfg.ttt_phased_prefix_docs, 2),
        slot_steps=min(ecfg.slot_steps, 3) if fast else ecfg.slot_steps)


def audit_positions(n_targets: int, ecfg: EvalConfig, limit: int = 12) -> list[int]:
    """Token positions to perturb: first/last, window and chunk boundaries, the middle."""
    cand = [1, 2, n_targets, n_targets // 2, ecfg.seq_len // 2]
    windows = plan_windows(n_targets, ecfg.seq_len, ecfg.stride or ecfg.seq_len)
    if ecfg.ttt_enabled:
        chunks = ttt_chunk_bounds(n_targets, ecfg.ttt_chunk_tokens)
        windows = [w for ws in ttt_chunk_windows(windows, chunks) for w in ws]
        for lo, _ in chunks[1:]:
            cand += [lo, lo + 1]
    for _, lo, hi in windows[1:4] + windows[len(windows) // 2:len(windows) // 2 + 1] + windows[-1:]:
        cand += [lo, lo + 1, hi - 1]
    picked: list[int] = []
    for j in cand:
        if 1 <= j <= n_targets and j not in picked:
            picked.append(j)
    return sorted(picked[:limit])


def _audit_once(count: np.ndarray) -> tuple[str, str]:
    bad = np.nonzero(count != 1)[0]
    if bad.size == 0:
        return "PASS", ""
    i = int(bad[0])
    return "FAIL", (f"{bad.size} targets not scored exactly once; first: position {i + 1} "
                    f"scored {int(count[i])}x")


def _audit_score_before_update(events: list, n_targets: int) -> tuple[str, str]:
    scored = np.zeros(n_targets + 1, dtype=bool)
    trained = 0
    for kind, lo, hi in events:
        if kind == "score":
            scored[lo:hi] = True
            continue
        trained += 1
        # Training targets [lo, hi) also read token lo, i.e. target lo-1 (token 0 is context).
        need = scored[max(lo - 1, 0):hi]
        if not need.all():
            first = max(lo - 1, 0) + int(np.argmin(need))
            return "FAIL", f"trained on targets [{lo},{hi}) before target {first} was scored"
    if trained == 0:
        return "PASS", "no training steps"
    return "PASS", ""


def _audit_run(eval_fn: Callable, tokens: torch.Tensor,
               cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, list, dict]:
    rec = ScoreRecorder(tokens.numel() - 1)
    events: list = []
    out = eval_fn(tokens, cfg, rec, events)
    return rec.nll_array(), rec.count_array(), events, out


class AuditProgress(Progress):
    """`audit:<phase> run:i/n eta:Xs` lines (pgolf.progress), about ten per phase and one at
    least every PROGRESS_EVERY_S: an audit is minutes of re-evaluations on a large model and
    should not look hung."""

    def __init__(self, log: Callable[[str], None] | None, phase: str, total: int) -> None:
        super().__init__(log, f"audit:{phase} run", total, lines=10)


def perturb_future(tokens: torch.Tensor, j: int, vocab: int) -> torch.Tensor:
    """A copy of tokens with every token from position j on replaced by a different id
    (a seeded random non-zero shift, so reruns perturb identically)."""
    pert = tokens.clone()
    g = torch.Generator().manual_seed(j)
    shift = torch.randint(1, max(vocab, 2), pert[j:].shape, generator=g).to(pert.device)
    pert[j:] = (pert[j:] + shift) % vocab
    return pert


def _audit_causality(eval_fn: Callable, tokens: torch.Tensor, cfg: EvalConfig, base: np.ndarray,
                     positions: list, vocab: int, tol: float,
                     progress: Callable | None = None) -> CausalityResult:
    """Every position is checked (a FAIL's margin is the worst leak, not the first one found)."""
    prog = AuditProgress(progress, "causality", len(positions))
    worst, first = 0.0, ""
    for k, j in enumerate(positions, start=1):
        nll, _, _, _ = _audit_run(eval_fn, perturb_future(tokens, j, vocab), cfg)
        # Targets at token positions < j are target indices < j - 1.
        diff = np.abs(nll[:j - 1] - base[:j - 1])
        prog.step(k)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        bad = np.nonzero(diff > tol)[0]
        if bad.size and not first:
            i = int(bad[0])
            first = (f"j={j}, first changed position {i + 1} < j, |dNLL|={diff[i]:.2e}, "
                     f"{bad.size} earlier positions changed")
    return CausalityResult("FAIL" if first else "PASS", first, worst, tol)


def _audit_normalized(eval_fn: Callable, tokens: torch.Tensor, cfg: EvalConfig, vocab: int,
                      tol: float, progress: Callable | None = None) -> tuple[str, str, float]:
    # Past the first window (and first TTT chunk) so SLOT deltas and TTT updates are in play;
    # one token after j0 is kept so token j0 is also an input (a model could peek at it).
    base = cfg.ttt_chunk_tokens if cfg.ttt_enabled else cfg.seq_len
    j0 = max(1, min(tokens.numel() - 2, base + 1 + (cfg.stride or cfg.seq_len) // 2))
    cut = tokens[:j0 + 2].clone()
    total = 0.0
    prog = AuditProgress(progress, "normalization", vocab)
    for a in range(vocab):
        cut[j0] = a
        nll, _, _, _ = _audit_run(eval_fn, cut, cfg)
        total += float(np.exp(-nll[j0 - 1]))
        prog.step(a + 1)
    dev = abs(total - 1.0)
    if dev > tol:
        return "FAIL", f"j={j0}: probabilities of all {vocab} ids sum to {total:.12f}, not 1", dev
    return "PASS", "", dev


def audit_model_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of the model on the CPU, with plain SDPA attention (no bf16-only FA3)."""
    twin = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    if hasattr(twin, "attn_backend"):
        twin.attn_backend = "sdpa"
    return twin


def self_test_config(cfg: EvalConfig) -> EvalConfig:
    """The audited slice's config switched to batch SLOT (at least one step, a non-zero rate)."""
    slot = EvalMode.parse("slot").eval_config(cfg)
    return dataclasses.replace(slot, slot_steps=max(slot.slot_steps, 1), slot_lr=slot.slot_lr or 0.003)


def _audit_self_test(eval_fn: Callable, tokens: torch.Tensor, cfg: EvalConfig, vocab: int,
                     tol: float, progress: Callable | None = None) -> tuple[str, str, float]:
    """Batch SLOT through the same causality check; FAIL unless caught by >= SELF_TEST_MARGIN."""
    scfg = self_test_config(cfg)
    n = tokens.numel() - 1
    prog = AuditProgress(progress, "self_test", 2)
    prog.step(0)
    base, _, _, _ = _audit_run(eval_fn, tokens, scfg)
    prog.step(1)
    res = _audit_causality(eval_fn, tokens, scfg, base, [max(2, n // 2)], vocab, tol)
    prog.step(2)
    if res.verdict == "FAIL" and res.margin >= SELF_TEST_MARGIN:
        return "PASS", "", res.margin
    return "FAIL", (f"the causality check caught known-leaky batch SLOT by only {res.margin:.3g}x the "
                    f"tolerance (needs >= {SELF_TEST_MARGIN:g}x): no verdict of this audit can be trusted"), res.margin


def audit(model: torch.nn.Module | None, tokens: Any, mode: str, ecfg: EvalConfig, tables: Any,
          device: torch.device | str = "cpu", eval_fn: Callable | None = None,
          positions: list | None = None, vocab_size: int = 0, atol: float | None = None,
          fast: bool = True, normalization: bool = True, norm_tol: float | None = None,
          log: Callable | None = None, progress: Callable | None = None,
          precision: str = "float64", self_test: bool = True) -> AuditReport:
    """Audit the mode named `mode` (one of EvalMode.names(): plain, sliding, ttt, slot, causal-slot,
    ...; the report shows the name as given) on the first ecfg.audit_tokens targets of tokens.
    eval_fn(tokens, cfg, recorder, events) -> dict replaces the built-in evaluator (model may
    then be None; no float64 copy and no self-test then). precision "float64" evaluates a float64
    CPU copy of the model (`device` is then unused), "native" the model as given on `device`.
    self_test runs batch SLOT through the causality check first (module docstring). log gets
    the summary, progress the per-run lines with ETA."""
    if precision not in AUDIT_ATOL:
        raise ValueError(f"audit precision must be one of {sorted(AUDIT_ATOL)}, got {precision!r}")
    builtin = eval_fn is None
    if builtin and precision == "float64":
        copying = AuditProgress(progress, "float64_copy", 1)
        copying.step(0)
        model, device = audit_model_copy(model), torch.device("cpu")
        copying.step(1)
        tables = as_byte_tables(tables, device)
    elif not builtin:
        precision = "native"  # what a caller's evaluator computes in is its own business
    device = torch.device(device)
    toks = val_tokens_tensor(tokens)
    if builtin and precision == "float64":
        toks = toks.cpu()
    if ecfg.audit_tokens > 0:
        toks = toks[:ecfg.audit_tokens + 1]
    n = toks.numel() - 1
    em = EvalMode.parse(mode)
    cfg = audit_eval_config(em.eval_config(ecfg), n, fast)
    if eval_fn is None:
        def eval_fn(t: torch.Tensor, c: EvalConfig, rec: ScoreRecorder, ev: list) -> dict:
            return evaluate(model, t, tables, c, Comm(device), device, None, rec, ev)
    vocab = (vocab_size or getattr(getattr(model, "cfg", None), "vocab_size", 0)
             or as_byte_tables(tables, "cpu").vocab_size)
    atol = AUDIT_ATOL[precision] if atol is None else atol
    norm_tol = AUDIT_NORM_TOL[precision] if norm_tol is None else norm_tol
    baseline = AuditProgress(progress, "baseline", 2)
    baseline.step(0)
    base, count, events, out = _audit_run(eval_fn, toks, cfg)
    baseline.step(1)
    again, _, _, _ = _audit_run(eval_fn, toks, cfg)
    baseline.step(2)
    # Rerunning unchanged input measures nondeterminism (GPU kernels); never below atol.
    noise = float(np.max(np.abs(again - base))) if n else 0.0
    tol = max(atol, 4.0 * noise)
    st, st_detail, st_margin = "n/a", "", float("nan")
    if self_test and builtin and n >= 4:
        st, st_detail, st_margin = _audit_self_test(eval_fn, toks, cfg, vocab, tol, progress)
    positions = positions or audit_positions(n, cfg)
    cause = _audit_causality(eval_fn, toks, cfg, base, positions, vocab, tol, progress)
    once, odetail = _audit_once(count)
    sbu, sdetail = _audit_score_before_update(events, n) if cfg.ttt_enabled else ("n/a", "")
    norm, ndetail, ndev = (_audit_normalized(eval_fn, toks, cfg, vocab, norm_tol, progress) if normalization
                           else ("n/a", "", float("nan")))
    report = AuditReport(mode, cause.verdict, cause.detail, once, odetail, sbu, sdetail, norm, ndetail,
                         positions, tol, noise, float(out.get("val_bpb", float("nan"))), em.causal,
                         precision, cause.max_delta, st, st_detail, st_margin, ndev, norm_tol)
    if log is not None:
        for line in report.summary().splitlines():
            log(line)
    return report
