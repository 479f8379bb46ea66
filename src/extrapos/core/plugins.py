"""Plugins: modules imported before any command runs, so that what they `@register` (an
encoding, a task) works everywhere — every CLI command, subprocesses extrapos starts, and run
directories reloaded later.

Two ways to name them:
- the `EXTRAPOS_PLUGINS` environment variable: comma-separated module names (importable from
  `sys.path`, e.g. through `PYTHONPATH`);
- the `extrapos.plugins` entry-point group of an installed package:
  `[project.entry-points."extrapos.plugins"] my_encodings = "my_package.encodings"`.

Importing `extrapos` loads them once. A plugin that fails to import is reported, not fatal to
the import: `plugin_errors()` lists the failures and the CLI stops on the first with exit 2.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

ENV_VAR = "EXTRAPOS_PLUGINS"
ENTRY_POINT_GROUP = "extrapos.plugins"

_loaded: list[str] = []
_errors: list[str] = []
_done = False


def plugin_names() -> list[tuple[str, str]]:
    """(module, where it was named) for every configured plugin, environment first."""
    names = [(m.strip(), ENV_VAR) for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.append((ep.value.split(":")[0], f"entry point {ep.name!r} of {ENTRY_POINT_GROUP}"))
    return names


def load_plugins() -> list[str]:
    """Import every configured plugin once; return the modules loaded."""
    global _done
    if _done:
        return list(_loaded)
    _done = True
    for module, where in plugin_names():
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # a plugin's own bug: report it with its origin
            _errors.append(
                f"plugin {module!r} (from {where}) failed to import: {type(exc).__name__}: {exc}; "
                f"fix the module or remove it from {ENV_VAR}"
            )
        else:
            _loaded.append(module)
    return list(_loaded)


def plugin_errors() -> list[str]:
    """One line per plugin that failed to import."""
    return list(_errors)
