"""The interpreter runs kernels the compiler may still reject: this compiles each pgolf kernel,
ahead of time and without a GPU, for Hopper (sm_90) through Triton's bundled ptxas, in a fresh
process with TRITON_INTERPRET unset, as the package defines them and as the counted record_1855
train_gpt.py does (its minifier renames their locals). The up-projection's matmuls must use Hopper's wgmma, and its
descriptor kernel (forward and both backward products) TMA copies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")

pytestmark = [pytest.mark.triton, pytest.mark.slow]

SRC = str(Path(__file__).resolve().parents[2] / "src")
_BUILD = r'''
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pgolf.kernels.leaky_mlp import _MLP_LAUNCH, _MLP_TILES, _mlp_kernels
from pgolf.kernels.softcap_ce import _ce_kernels

if SOURCE == "counted":
    # The kernels as record_1855's counted train_gpt.py defines them (python-minifier renamed
    # their locals): the file run under another name defines everything and starts nothing.
    from pgolf.bundle.build import shipped_files
    from pgolf.config import resolve_config, shippable_config
    counted = shipped_files(shippable_config(resolve_config("record_1855", env={})[0]))["train_gpt.py"]
    ns = {"__name__": "counted"}
    exec(compile(counted, "train_gpt.py", "exec"), ns)
    _ce_kernels, _mlp_kernels = ns["_ce_kernels"], ns["_mlp_kernels"]
fwd, bwd = _ce_kernels()
mm, mm_desc = _mlp_kernels()
C = "constexpr"
out = {}


def build(name, fn, sig, consts, **opts):
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=opts)
    out[name] = {"cubin_bytes": len(k.asm["cubin"]), "wgmma": "wgmma" in k.asm["ptx"],
                 "tma": "cp.async.bulk.tensor" in k.asm["ptx"]}


ce = {"HAS_CAP": True, "IGNORE": -100, "BLOCK": 1024}
build("ce_forward", fwd, {"x_ptr": "*bf16", "t_ptr": "*i64", "loss_ptr": "*fp32", "lse_ptr": "*fp32", "V": "i32",
                          "stride_row": "i32", "cap": "fp32", "HAS_CAP": C, "IGNORE": C, "BLOCK": C}, ce, num_warps=8)
build("ce_backward", bwd, {"x_ptr": "*bf16", "t_ptr": "*i64", "lse_ptr": "*fp32", "g_ptr": "*fp32", "dx_ptr": "*bf16",
                           "V": "i32", "stride_row": "i32", "stride_drow": "i32", "cap": "fp32", "HAS_CAP": C,
                           "IGNORE": C, "BLOCK": C}, ce, num_warps=8)
bm, bn, bk = _MLP_TILES
sig = {n: "*bf16" for n in ("a_ptr", "b_ptr", "c_ptr", "aux_ptr")}
sig.update({n: "i32" for n in ("M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn", "s_cm", "s_cn")})
sig.update(slope="fp32", PROLOGUE=C, EPILOGUE=C, BM=C, BN=C, BK=C)
for name, pro, epi in (("mlp_forward", False, True), ("mlp_backward", True, False)):
    build(name, mm, sig, {"PROLOGUE": pro, "EPILOGUE": epi, "BM": bm, "BN": bn, "BK": bk}, **_MLP_LAUNCH)
sig = {n: "*bf16" for n in ("a_ptr", "b_ptr", "c_ptr", "aux_ptr")}
sig.update({n: "i32" for n in ("M", "N", "K", "s_a", "s_b", "s_c")})
sig.update(slope="fp32", TA=C, PROLOGUE=C, BM=C, BN=C, BK=C)
for name, ta, pro in (("forward", False, False), ("backward_dx", False, True), ("backward_dw", True, True)):
    build(f"mlp_{name}_descriptor", mm_desc, sig, {"TA": ta, "PROLOGUE": pro, "BM": bm, "BN": bn,
                                                             "BK": bk}, **_MLP_LAUNCH)
print(json.dumps(out))
'''


@pytest.mark.parametrize("source", ["package", "counted"])
def test_every_kernel_compiles_for_sm90(source):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=SRC, TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", f"SOURCE = {source!r}\n" + _BUILD], env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("this triton has no ptxas to build for sm_90")
    assert r.returncode == 0, r.stderr[-3000:]
    built = json.loads(r.stdout.strip().splitlines()[-1])
    desc = {f"mlp_{n}_descriptor" for n in ("forward", "backward_dx", "backward_dw")}
    assert set(built) == {"ce_forward", "ce_backward", "mlp_forward", "mlp_backward"} | desc
    assert all(b["cubin_bytes"] > 0 for b in built.values()), built
    assert built["mlp_forward"]["wgmma"] and built["mlp_backward"]["wgmma"], built
    # The descriptor kernel moves its tiles with TMA copies (the pointer kernels do not), in each pass.
    assert all(built[n]["tma"] and built[n]["wgmma"] for n in desc), built
