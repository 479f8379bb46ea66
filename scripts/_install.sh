# Sourced by scripts/*.sh: install extrapos (and torch first, where it is missing).
# torch==2.13.0 is installed explicitly when absent: an unpinned `torch` would pull a multi-GB
# CUDA build on machines without one; pyproject.toml keeps an open range for everyone else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "installing torch==2.13.0 ..." >&2
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".${EXTRAS:-}"
