"""Record #1855's CaseOps validation path beside pgolf's record_1855, on the shared CaseOps data.

    python bench/sidebyside/caseops.py --record-script PATH/train_gpt.py

Rows: the validation tokens each keeps with seq_len 2048 and the sidecar bytes their targets
carry (the record's ValidationData against pgolf's load_val); the ids of the first documents;
the same documents re-encoded from their decoded text by pgolf's encode_document and by the
record's lossless_caps.py (when it sits beside the script); and the plain-eval bpb of one
tiny fp32 model (the record's GPT, weights perturbed so every block acts, copied into pgolf's
GPT) over the first EVAL_WINDOWS windows of 2048 tokens, charged from the sidecar. The record
scores one window per batch here: with more, its eval_val packs a batch's windows into one
stream whose documents keep their context across window boundaries (the last info row).
"""

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))

from pgolf.config import resolve_config  # noqa: E402
from pgolf.data.caseops import decode_caseops  # noqa: E402
from pgolf.data.paths import load_val  # noqa: E402
from pgolf.data.sidecar import SidecarBytes  # noqa: E402
from pgolf.data.tokenizer_train import encode_document  # noqa: E402
from pgolf.dist import Comm  # noqa: E402
from pgolf.eval.bpb import eval_plain  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402

SHARED = HERE.parents[1] / ".." / "shared" / "data"
DATA = SHARED / "datasets" / "fineweb_legal_sp8192_caseops"
TOKENIZER = SHARED / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
SEQ = 2048
N_DOCS = 40
EVAL_WINDOWS = 8  # 16,384 tokens
ARCH = dict(num_layers=6, model_dim=64, num_heads=4, num_kv_heads=2, num_loops=2, loop_start=2, loop_end=3,
            xsa_last_n=6)
PARALLEL_START = 4
CPU = torch.device("cpu")


def _row(quantity: str, record, pgolf, target) -> dict:
    diff = pgolf - record
    ok = "info" if target is None else bool(abs(diff) <= target)
    return dict(quantity=quantity, record=record, pgolf=pgolf, diff=diff, target="" if target is None else target,
                ok=ok)


def _record_hparams(rec):
    h = rec.Hyperparameters()
    for k, v in ARCH.items():
        setattr(h, k, v)
    h.parallel_start_layer, h.vocab_size, h.fused_ce_enabled = PARALLEL_START, 8192, False
    h.sparse_attn_gate_enabled, h.sparse_attn_gate_scale, h.gate_window = True, 0.5, 12
    h.smear_gate_enabled, h.caseops_enabled = True, True
    h.tokenizer_path = str(TOKENIZER)
    h.val_files = str(DATA / "fineweb_val_*.bin")
    h.val_bytes_files = str(DATA / "fineweb_val_bytes_*.bin")
    h.eval_seq_len, h.rank, h.world_size = SEQ, 0, 1
    return h


def _documents(tokens: np.ndarray, n: int) -> list[np.ndarray]:
    bos = np.flatnonzero(tokens == 1).tolist() + [len(tokens)]
    return [tokens[a:b] for a, b in zip(bos[:n], bos[1:n + 1])]


def _lossless_caps(rec):
    path = Path(rec.__file__).with_name("lossless_caps.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("record_lossless_caps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loader_rows(rec, h) -> tuple[list[dict], object, object]:
    rv = rec.ValidationData(h, CPU)
    cfg, _ = resolve_config("record_1855", env={}, sets=[f"data.path={DATA}", f"data.tokenizer_path={TOKENIZER}"])
    pv = load_val(cfg, CPU)
    rt, pt = rv.val_tokens.long().numpy(), pv.tokens.numpy()
    out = [_row("val tokens kept (seq_len 2048)", int(rt.size), int(pt.size), 0),
           _row("sidecar bytes of the kept targets", int(rv.val_bytes[1:].long().sum()), pv.tables.total(), 0)]
    rdocs, pdocs = _documents(rt, N_DOCS), _documents(pt, N_DOCS)
    same = sum(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(rdocs, pdocs))
    out.append(_row(f"first {N_DOCS} docs: identical token ids (docs)", len(rdocs), same, 0))
    return out, rv, rdocs


def _reencode_rows(rec, sp, docs: list[np.ndarray]) -> list[dict]:
    """Each document's text (its ids decoded, CaseOps undone) encoded again by both pipelines."""
    caps = _lossless_caps(rec)
    texts = [decode_caseops(sp.decode(d[1:].tolist())) for d in docs]
    pg = [encode_document(sp, t, True)[0] for t in texts]
    out = [_row(f"first {N_DOCS} docs re-encoded by pgolf == shard ids (docs)", len(docs),
                sum(np.array_equal(np.asarray(p), d) for p, d in zip(pg, docs)), None)]
    if caps is not None:
        rc = [[1] + sp.encode(caps.encode_lossless_caps_v2(t), out_type=int) for t in texts]
        out.append(_row(f"first {N_DOCS} docs re-encoded: record lossless_caps == pgolf (docs)", len(docs),
                        sum(r == p for r, p in zip(rc, pg)), 0))
    return out


def _models(rec, h):
    rec.BOS_ID = 1
    torch.manual_seed(0)
    rm = rec.GPT(h).float()
    with torch.no_grad():
        for p in rm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rm.looping_active = True
    sets = [f"model.{k}={v}" for k, v in ARCH.items()] + [f"model.parallel_start={PARALLEL_START}"]
    # The record's GPT here is an fp32 module (never cast to bf16), so its RoPE tables are fp32
    # angles of fp32 frequencies: record_1855's as-trained bf16 numerics are compared in optim.py.
    sets += ["model.rope_precision=fp32", "model.embed_dtype=fp32", "model.stream_dtype=fp32"]
    cfg, _ = resolve_config("record_1855", env={}, sets=sets)
    pm = GPT(cfg.model).float()
    pm.load_state_dict(rm.state_dict(), strict=True)
    pm.looping_active = True
    pm.eval()
    return rm, pm


def _record_plain_bpb(rec, h, rm, tokens: torch.Tensor, nbytes: torch.Tensor, windows_per_batch: int) -> float:
    # eval_val's batch: val_batch_tokens / (world * grad_accum) tokens, here windows_per_batch windows.
    h.grad_accum_steps, h.val_batch_tokens = 1, windows_per_batch * SEQ
    val = types.SimpleNamespace(val_tokens=tokens, val_bytes=nbytes)
    return rec.eval_val(h, CPU, val, rm)[1]


def rows(record_module) -> list[dict]:
    if not (DATA / "fineweb_val_bytes_000000.bin").is_file() or not TOKENIZER.is_file():
        return [dict(quantity=f"caseops: shared data missing ({DATA.resolve()})", record="", pgolf="", diff="",
                     target="", ok=False)]
    rec = record_module
    torch.set_num_threads(2)
    h = _record_hparams(rec)
    out, rv, docs = _loader_rows(rec, h)
    out += _reencode_rows(rec, rv.sp, docs)
    n = EVAL_WINDOWS * SEQ + 1
    tokens, nbytes = rv.val_tokens[:n].long(), rv.val_bytes[:n]
    rm, pm = _models(rec, h)
    with torch.no_grad():
        r1 = _record_plain_bpb(rec, h, rm, tokens, nbytes, 1)
        p1 = eval_plain(pm, tokens, SEQ, SEQ, SidecarBytes(nbytes.long(), 8192), Comm(), CPU)
        out.append(_row(f"plain eval bpb, tiny fp32 model, {n - 1} tokens, sidecar", r1, p1["val_bpb"], 1e-6))
        out.append(_row("plain eval bytes charged (record: sidecar sum of the targets)",
                        int(nbytes[1:].long().sum()), p1["bytes"], 0))
        rb = _record_plain_bpb(rec, h, rm, tokens, nbytes, EVAL_WINDOWS)
        out.append(_row(f"plain eval bpb, record packing {EVAL_WINDOWS} windows per batch (cross-window context)",
                        rb, p1["val_bpb"], None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record-script", required=True, help="the record's train_gpt.py")
    args = ap.parse_args()
    from record_import import import_record
    rec = import_record(args.record_script, env={"CASEOPS_ENABLED": "1"})
    for r in rows(rec):
        print("  ".join(f"{k}={r[k]}" for k in ("quantity", "record", "pgolf", "diff", "target", "ok")))


if __name__ == "__main__":
    main()
