"""Side by side with record #1855: its training batches, its calibration windows and its
per-group artifact against pgolf's data.packing=stream, quant.calib_windows=shuffled and
quant.compressor=pergroup, on the same inputs (CPU).

(a) the record's DocumentPackingLoader (2 ranks, no accumulation) and pgolf's stream loader (one
    process, 2 micro-steps) over the same shard: tokens, targets and cu_seqlens, batch by batch,
    and again after the shard wraps.
(b) the record's ShuffledSequenceLoader (rank 0 of 8) and pgolf's shuffled_window_starts.
(c) one set of int6/int7 codes and scales from the record's gptq_mixed_quantize (identity
    Hessians, record shapes) written by the record's _serialize_pergroup and by pgolf's
    pergroup artifact: bytes.

    python bench/sidebyside/data.py --record-script /path/to/records/.../train_gpt.py
"""

import argparse
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgolf.config_tree import QuantConfig  # noqa: E402
from pgolf.data.loader import DistributedTokenLoader  # noqa: E402
from pgolf.data.shards import read_header  # noqa: E402
from pgolf.model.attention import doc_layout  # noqa: E402
from pgolf.quant import artifact as pg_artifact  # noqa: E402
from pgolf.quant.calibration import shuffled_window_starts  # noqa: E402

SHARD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "datasets" / \
    "fineweb_legal_sp8192_caseops" / "fineweb_train_000000.bin"
SEQ = 2048


def row(quantity, record, pgolf, target, ok, diff=None) -> dict:
    if diff is None and isinstance(record, (int, float)) and isinstance(pgolf, (int, float)):
        diff = pgolf - record
    return {"quantity": quantity, "record": record, "pgolf": pgolf, "diff": diff if diff is not None else "",
            "target": target, "ok": bool(ok)}


@contextlib.contextmanager
def no_pinned_memory():
    """The record pins its host batches (CUDA only); on CPU the same tensors, unpinned."""
    empty, pin = torch.empty, torch.Tensor.pin_memory
    torch.empty = lambda *a, pin_memory=False, **k: empty(*a, **k)
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.empty, torch.Tensor.pin_memory = empty, pin


def batch_rows(rec, global_tokens: int, steps: int, skip_steps: int = 0, label: str = "") -> list[dict]:
    world = 2
    h = [SimpleNamespace(rank=r, world_size=world, train_seq_len=SEQ, train_files=str(SHARD)) for r in range(world)]
    pg = DistributedTokenLoader([str(SHARD)], 0, 1, "cpu", packing="stream", bos_id=1)
    same_tok = same_cu = 0
    n_seg = 0
    with no_pinned_memory():
        loaders = [rec.DocumentPackingLoader(hr, torch.device("cpu")) for hr in h]
        for step in range(skip_steps + steps):
            for r in range(world):
                x, y, cu, _ = loaders[r].next_batch(global_tokens, 1)
                px, py = pg.next_batch(global_tokens, SEQ, world)
                if step < skip_steps:
                    continue
                pcu = doc_layout(px, 1, "varlen", SEQ).cu_seqlens
                same_tok += int(torch.equal(x, px) and torch.equal(y, py))
                same_cu += int(torch.equal(cu.long(), pcu.long()))
                n_seg += int((cu[1:] > cu[:-1]).sum())
    n = steps * world
    if skip_steps:
        label += f" (pgolf epoch {pg.stream.epoch})"
    return [row(f"stream micro-batches with identical x and y{label} ({global_tokens} tokens/step)", n, same_tok,
                f"{n} of {n}", same_tok == n),
            row(f"stream micro-batches with identical cu_seqlens{label} ({n_seg} segments)", n, same_cu,
                f"{n} of {n}", same_cu == n)]


def calibration_rows(rec) -> list[dict]:
    h = SimpleNamespace(rank=0, world_size=8, train_seq_len=SEQ, train_files=str(SHARD))
    ld = rec.ShuffledSequenceLoader(h, torch.device("cpu"))
    batches = 3
    xs = [ld.next_batch(786432, 1)[0] for _ in range(batches)]
    per_batch = 786432 // 8 // SEQ
    draws = shuffled_window_starts([read_header(str(SHARD))], SEQ, batches * per_batch)
    shard = np.fromfile(SHARD, dtype="<u2", offset=1024)
    mine = torch.from_numpy(np.stack([shard[a:a + SEQ].astype(np.int64) for _, a in draws]))
    got = torch.cat(xs)
    same = int((got == mine).all(dim=1).sum())
    return [row(f"calibration windows equal ({batches} batches x {per_batch} x {SEQ}, rank 0 of 8)",
                len(got), same, f"{len(got)} of {len(got)}", same == len(got))]


def record_state(layers: int, vocab: int = 8192, dim: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """Record-shaped float weights (the script's unbanked names), Gaussian."""
    g = torch.Generator().manual_seed(seed)
    kv, hidden = dim // 2, 4 * dim
    sd = {"tok_emb.weight": torch.randn(vocab, dim, generator=g) * 0.05}
    for i in range(layers):
        for name, shape in (("attn.c_q", (dim, dim)), ("attn.c_k", (kv, dim)), ("attn.c_v", (kv, dim)),
                            ("attn.proj", (dim, dim)), ("mlp.fc", (hidden, dim)), ("mlp.proj", (dim, hidden))):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(*shape, generator=g) * 0.02
        sd[f"blocks.{i}.attn.q_gain"] = torch.full((8,), 5.0)
        sd[f"blocks.{i}.attn.attn_gate_w"] = torch.randn(8, 12, generator=g) * 0.1
        sd[f"blocks.{i}.attn_scale"] = torch.ones(dim)
    sd["skip_weights"] = torch.ones(5, dim)
    return sd


def as_pgolf_payload(result: dict[str, torch.Tensor]) -> dict[str, dict]:
    """The record's quantized tensors as pgolf payload entries: codes + scales of every .q, the
    rest byte for byte (int8 LQER factors and gates raw, fp16 passthrough as fp16)."""
    out = {}
    for name, t in sorted(result.items()):
        if name.endswith(".q") and name[:-2] + ".scale" in result:
            base = name[:-2]
            bits = 7 if base.startswith("tok_emb") else 6
            out[base] = {"kind": "int", "shape": list(t.shape), "dtype": "float32", "method": "gptq", "bits": bits,
                         "q": t, "scale": result[base + ".scale"]}
        elif name.endswith(".scale") and name[:-6] + ".q" in result:
            continue
        elif t.dtype == torch.float16:
            out[name] = {"kind": "fp16", "shape": list(t.shape), "dtype": "float16", "data": t}
        else:
            out[name] = {"kind": "raw", "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1], "data": t}
    return out


def artifact_rows(rec, layers: int) -> list[dict]:
    h = rec.Hyperparameters()
    h.embed_bits, h.matrix_bits = 7, 6
    h.mlp_clip_sigmas, h.attn_clip_sigmas, h.embed_clip_sigmas = 11.5, 13.0, 14.0
    h.lqer_enabled, h.lqer_asym_enabled, h.lqer_rank, h.lqer_top_k, h.lqer_asym_group = True, True, 4, 3, 64
    h.gated_attn_quant_gate = True
    sd = record_state(layers)
    hess = {n: torch.eye(t.shape[1]) for n, t in sd.items() if t.ndim == 2 and t.numel() > 65536}
    t0 = time.perf_counter()
    result, meta = rec.gptq_mixed_quantize(sd, hess, h)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rec_blob = rec._serialize_pergroup(result, meta, layers, tmp)
    t2 = time.perf_counter()
    payload = as_pgolf_payload(result)
    q = QuantConfig()
    q.compressor, q.level = "pergroup", 9
    real = pg_artifact.quantize_state_dict
    pg_artifact.quantize_state_dict = lambda *_a, **_k: (payload, {})  # the record's codes, pgolf's format
    try:
        blob, _ = pg_artifact.build_artifact({}, q)
    finally:
        pg_artifact.quantize_state_dict = real
    t3 = time.perf_counter()
    back, _ = pg_artifact.unpack_artifact(blob)
    codes_ok = all(torch.equal(back[n], payload[n]["q"].float() * payload[n]["scale"].float()[:, None])
                   for n in payload if payload[n]["kind"] == "int")
    rel = (len(blob) - len(rec_blob)) / len(rec_blob)
    print(f"# quantize {t1 - t0:.0f}s, record pergroup {t2 - t1:.0f}s, pgolf pergroup {t3 - t2:.0f}s",
          file=sys.stderr)
    return [row(f"pergroup artifact bytes, same codes ({layers} layers, vocab 8192, d 512)", len(rec_blob),
                len(blob), "within 0.5%", abs(rel) <= 0.005, diff=f"{len(blob) - len(rec_blob):+d} ({100 * rel:+.3f}%)"),
            row("pgolf pergroup artifact reads back the record's codes x scales exactly", "-", codes_ok, "True",
                codes_ok)]


def rows(record_module, layers: int = 1) -> list[dict]:
    if not SHARD.is_file():
        raise SystemExit(f"{SHARD}: no shard; the side-by-side needs the CaseOps SP8192 training shard")
    out = batch_rows(record_module, 16384, 4)
    n = read_header(str(SHARD))
    big = 1 << 20
    wrap_at = math.ceil(n / (big + 2))  # steps until the shard's end is met
    out += batch_rows(record_module, big, 2, skip_steps=wrap_at - 1, label=" across the shard's wrap")
    out += calibration_rows(record_module)
    out += artifact_rows(record_module, layers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record-script", required=True)
    ap.add_argument("--layers", type=int, default=1,
                    help="record-shaped layers in the artifact check (11 = the record's; minutes more)")
    args = ap.parse_args()
    from record_import import import_record
    rec = import_record(args.record_script)
    for r in rows(rec, args.layers):
        print(r)


if __name__ == "__main__":
    main()
