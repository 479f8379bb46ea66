"""CoPE's fused CPU kernels (`cope_cpu.cpp`), built on first use and cached per machine.

CoPE's per-pair work (gates, reverse cumulative sum, interpolation, and their backward) is ~23
elementwise passes over each (b, h, c, t') chunk in ATen; the kernels do each query row in one
scan and one loop while it sits in L1 cache, with the same numbers operation for operation
(the file's header lists them; tests compare the two bitwise). `torch.utils.cpp_extension.load`
compiles them once (needs a C++ compiler and ninja; about a minute on 2 cores) into torch's
extension cache
(`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions); later processes load the built
library. Where the build fails, `load()` warns once and returns None, and CoPE runs its ATen
composition (`extrapos.encodings.cope._CoPELogits`), the same numbers, slower. (A
failed build is remembered per process only: set `EXTRAPOS_NATIVE=0` to stop later processes
from trying.) float32 on the CPU only; other dtypes and devices take the ATen path. "The same
numbers" assumes ATen's FMA kernels (AVX2/AVX-512: its lerp is one fma; torch's scalar
"default" CPU capability rounds twice) — the tests check it where they run. NaN scores give
NaN logits here, where ATen's gather refuses the index.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("cope_cpu.cpp")
NAME = "extrapos_cope_cpu"
#: ATen rounds a·b + c twice where it does not call fma: the compiler must not fuse them
CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]

_loaded: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """False when the environment says EXTRAPOS_NATIVE=0."""
    return os.environ.get("EXTRAPOS_NATIVE", "1") != "0"


def load() -> ModuleType | None:
    """The built kernels (`forward`, `backward`), or None where they cannot be built."""
    if not enabled():
        return None
    if "cope" not in _loaded:
        _loaded["cope"] = _build()
    return _loaded["cope"]


def _built_before(cpp_extension: ModuleType) -> bool:
    """Whether a library from an earlier build is in torch's extension cache (then loading takes
    a second, unless the source changed); True when that cannot be told (no message)."""
    try:
        folder = Path(cpp_extension._get_build_directory(NAME, verbose=False))
    except Exception:  # noqa: BLE001  (a private helper of torch's: never fail on it)
        return True
    return (folder / f"{NAME}.so").exists()


def _build() -> ModuleType | None:
    try:
        from torch.utils import cpp_extension

        if not _built_before(cpp_extension):
            print(
                "extrapos: building CoPE's fused CPU kernel (once per machine, about a minute)",
                file=sys.stderr,
                flush=True,
            )
        return cpp_extension.load(
            name=NAME,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001  (no compiler, no ninja, a failed build: fall back)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(
            f"extrapos: CoPE's fused CPU kernel could not be built ({type(error).__name__}: "
            f"{first[:200]}); CoPE runs its ATen path instead (the same numbers, ~2x slower "
            f"training). Install a C++ compiler and ninja, or set EXTRAPOS_NATIVE=0 to skip "
            f"the build.",
            stacklevel=3,
        )
        return None
