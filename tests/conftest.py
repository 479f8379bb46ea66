"""Shared test setup: the on-disk token/tokenizer cache goes to a temporary folder, never to
the user's ~/.cache/extrapos (subprocesses inherit it through the environment)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_extrapos_cache(tmp_path_factory):
    previous = os.environ.get("EXTRAPOS_CACHE")
    os.environ["EXTRAPOS_CACHE"] = str(tmp_path_factory.mktemp("extrapos-cache"))
    yield
    if previous is None:
        os.environ.pop("EXTRAPOS_CACHE", None)
    else:
        os.environ["EXTRAPOS_CACHE"] = previous
