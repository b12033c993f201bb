"""Writes tests/fixtures/record_1855_forward.pt: record #1855's own forward on a tiny model.

    PYTHONPATH=src python3 bench/sidebyside/forward_fixture.py --record-script PATH/train_gpt.py

The record's script is imported as it is (record_import.py: SDPA in place of FA3) and its GPT is
built at a tiny width with the record's depth, loops, lanes and gates; its weights are its own
init plus fixed noise. The fixture holds that state dict (the record's tensor names, which are
also pgolf's), the inputs and the logits the script computes: a causal row and a row of three
documents (BOS-split varlen attention), each with the loop off and on. It also holds the
script's sha256 and this command, so a test can compare pgolf's record_1855 model with the
script's output without importing the script. fp32 throughout; about 110 KB.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_import import import_record  # noqa: E402

OUT = HERE.parents[1] / "tests" / "fixtures" / "record_1855_forward.pt"
SEED = 0
SEQ = 32
BOS = 1
DOC_STARTS = (0, 11, 20)
# The record's hyper-parameters as its run command sets them, at a tiny width. The matching pgolf
# overrides of the record_1855 preset are PGOLF_SETS (the test reads them from the fixture).
TINY = dict(model_dim=16, num_heads=2, num_kv_heads=1, vocab_size=32, mlp_mult=2.0, rope_dims=4, gate_window=6)
RECORD_H = dict(num_layers=11, num_loops=2, loop_start=3, loop_end=5, parallel_start_layer=8,
                sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5, smear_gate_enabled=True,
                skip_gates_enabled=True, xsa_last_n=11, rope_yarn=False, **TINY)
PGOLF_SETS = [f"model.{k}={v}" for k, v in TINY.items()] + [
    "model.compile=false", "model.embed_dtype=fp32", "model.stream_dtype=fp32", "model.rope_precision=fp32"]


def record_model(mod) -> torch.nn.Module:
    h = mod.Hyperparameters()
    for k, v in RECORD_H.items():
        setattr(h, k, v)
    mod.BOS_ID = BOS
    torch.manual_seed(SEED)
    model = mod.GPT(h).float().eval()
    with torch.no_grad():
        # Zero-initialized projections and gates would leave whole paths untested.
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(causal ids [1, SEQ] without BOS, three-document ids [1, SEQ], their cu_seqlens)."""
    g = torch.Generator().manual_seed(SEED + 1)
    plain = torch.randint(2, TINY["vocab_size"], (1, SEQ), generator=g)
    docs = plain.clone()
    docs[0, list(DOC_STARTS)] = BOS
    cu = torch.tensor([*DOC_STARTS, SEQ], dtype=torch.int32)
    return plain, docs, cu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", required=True)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    script = Path(args.record_script)
    mod = import_record(script)
    model = record_model(mod)
    plain, docs, cu = inputs()
    logits = {}
    for loop in (False, True):
        model.looping_active = loop
        with torch.no_grad():
            logits[f"causal_loop{int(loop)}"] = model.forward_logits(plain)
            logits[f"docs_loop{int(loop)}"] = model.forward_logits(docs, cu_seqlens=cu, max_seqlen=SEQ)
    fixture = {
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "plain_ids": plain, "docs_ids": docs, "cu_seqlens": cu, "logits": logits,
        "pgolf_sets": PGOLF_SETS, "record_h": {k: v for k, v in RECORD_H.items()},
        "record_script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "command": "PYTHONPATH=src python3 bench/sidebyside/forward_fixture.py --record-script "
                   f"PATH/{script.parent.name}/{script.name}",
        "torch": str(torch.__version__),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes; record script sha256 {fixture['record_script_sha256'][:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
