# Sourced by scripts/*.sh: install extrapos (and torch first, where it is missing).
# torch==2.13.0 is installed explicitly when absent: an unpinned `torch` would pull a newer
# build than the one tested, and PyPI's Linux torch wheel is the CUDA build (multi-GB NVIDIA
# libraries). On a machine without a GPU, set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# to take PyTorch's CPU wheels; pyproject.toml keeps an open range for everyone else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  INDEX=${TORCH_INDEX_URL:-}
  echo "installing torch==2.13.0 ${INDEX:+from $INDEX }..." >&2
  "${PIP[@]}" ${INDEX:+--index-url "$INDEX"} "torch==2.13.0"
fi
"${PIP[@]}" -e ".${EXTRAS:-}"
# CoPE's fused CPU kernel: built here once (about a minute; cached by torch per machine), so
# that a first run does not pause for it. A machine without a compiler only gets a warning.
"$PY" -c "from extrapos.kernels import cope_native; cope_native.load()" || true
