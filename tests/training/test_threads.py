"""Data-parallel ranks on one CPU machine: when their thread pools oversubscribe the cores,
`init_distributed` warns with the OMP_NUM_THREADS that fits."""

from __future__ import annotations

from extrapos.training.distributed import oversubscription


def test_oversubscription_names_the_fix_and_stays_quiet_when_ranks_fit() -> None:
    assert oversubscription(2, 1, 2) is None
    assert oversubscription(1, 2, 2) is None
    reason = oversubscription(2, 2, 2)
    assert reason is not None and "OMP_NUM_THREADS=1" in reason
    assert "OMP_NUM_THREADS=4" in oversubscription(2, 8, 8)
    assert "OMP_NUM_THREADS=1" in oversubscription(3, 1, 2)  # never below one thread
