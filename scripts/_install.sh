# Sourced by scripts/*.sh: install extrapos (and torch first, where it is missing).
# torch==2.13.0 is installed explicitly when absent. PyPI's Linux torch wheel is the CUDA build
# (multi-GB NVIDIA libraries), pinned or not: without a GPU (no nvidia-smi) it comes from
# PyTorch's CPU index instead (TORCH_INDEX_URL overrides); pyproject.toml keeps an open range.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  INDEX=${TORCH_INDEX_URL:-}
  if [ -z "$INDEX" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    INDEX=https://download.pytorch.org/whl/cpu
  fi
  echo "installing torch==2.13.0 ${INDEX:+from $INDEX }..." >&2
  "${PIP[@]}" ${INDEX:+--index-url "$INDEX"} "torch==2.13.0"
fi
"${PIP[@]}" -e ".${EXTRAS:-}"
