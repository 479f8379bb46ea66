#!/usr/bin/env bash
# The main job: install, then run the quick comparison on the built-in corpus.
# Extra arguments go to `extrapos bench` (e.g. --methods rope,alibi --out my_dir).
source "$(dirname "$0")/_install.sh"
"$PY" -m extrapos bench "$@"
