"""CUDA checks: every test here is skipped, with the reason, where torch sees no GPU.

They run on a GPU machine through `bash bench/gpu_check.sh` (step a). To check the tests'
own logic on a CPU, PGOLF_GPU_TESTS_ON_CPU=1 runs the device-independent ones on the CPU at
small sizes (gloo instead of NCCL) and skips the CUDA-only ones with their reason; CI never
sets it. With PGOLF_GPU_REPORT=DIR the tests write what they measured (backends chosen,
errors against references) to DIR/gpu_tests_report.json.
Nothing here touches CUDA at import time: collection must work on a CPU-only torch.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_helpers import ON_CPU, REPORT_FILE  # noqa: E402

HERE = Path(__file__).resolve().parent


def _no_cuda_reason() -> str:
    return (f"no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "these checks run on a GPU machine via `bash bench/gpu_check.sh`")


# Cheap, fundamental checks first: gpu_check.sh runs them with -x, so a failure there stops
# before the minute-long compile and training checks.
ORDER = ("numerics", "io", "dist", "eval", "compile", "train")


def _rank(item) -> int:
    stem = Path(str(item.fspath)).stem
    return next((i for i, key in enumerate(ORDER) if stem.endswith(key)), len(ORDER))


def pytest_collection_modifyitems(config, items):
    # Called with the whole session's items: only this folder's tests are ours.
    ours = [i for i, item in enumerate(items) if HERE in Path(str(item.fspath)).resolve().parents]
    for slot, item in zip(ours, sorted((items[i] for i in ours), key=_rank)):
        items[slot] = item
    if ON_CPU or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=_no_cuda_reason())
    for i in ours:
        items[i].add_marker(skip)


@pytest.fixture(scope="session")
def dev() -> torch.device:
    """The device under test: the GPU, or the CPU under PGOLF_GPU_TESTS_ON_CPU=1."""
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    if ON_CPU:
        return torch.device("cpu")
    pytest.skip(_no_cuda_reason())


@pytest.fixture
def cuda_only(dev) -> None:
    if dev.type != "cuda":
        pytest.skip("needs a real CUDA device; PGOLF_GPU_TESTS_ON_CPU runs only device-independent logic")


class GpuReport:
    """One JSON file of measurements, rewritten after every record so a run killed by its
    timeout still leaves what it had."""

    def __init__(self, folder: str) -> None:
        self.path = Path(folder) / REPORT_FILE if folder else None
        self.data: dict = {}

    def record(self, section: str, values: dict) -> None:
        self.data[section] = values
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


@pytest.fixture(scope="session")
def report(dev) -> GpuReport:
    rep = GpuReport(os.environ.get("PGOLF_GPU_REPORT", ""))
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(dev), "on_cpu_logic_check": ON_CPU}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(name=props.name, capability=list(torch.cuda.get_device_capability(dev)),
                   memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                   nccl=".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available()
                   else None)
    rep.record("environment", env)
    return rep


@pytest.fixture
def fp32_exact():
    """fp32 matmuls without TF32, whatever an earlier test or module set."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[0], old[1]
    torch.set_float32_matmul_precision(old[2])
