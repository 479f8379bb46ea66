#!/usr/bin/env bash
# The test suite: install with the dev extra (pytest, ruff, transformers), lint, then pytest.
# Extra arguments go to pytest (e.g. -m slow, -k rope).
EXTRAS="[dev]"
source "$(dirname "$0")/_install.sh"
"$PY" -m ruff check src tests
"$PY" -m pytest -q "$@"
