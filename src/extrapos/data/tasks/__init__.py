"""Synthetic length-generalization tasks (Deletang et al. 2023; Ruoss et al. 2023).

    from extrapos.data.tasks import get_task, list_tasks
    from extrapos.probes.tasks import train_on_task, evaluate_task

    task = get_task("copy")                         # or reverse, sort, parity, addition, …
    batch = task.sample_batch(numpy.random.default_rng(0), batch_size=8, length=16)
    result = train_on_task(GPTConfig(encoding="alibi"), task, train_lengths=16, steps=300)
    records = evaluate_task(result.model, task, lengths=[16, 32, 64, 128], n_samples=256)

See `extrapos.data.tasks.base` for the sequence format, the mask and the accuracy definitions, and
`extrapos.data.tasks.library` for the tasks.
"""

from extrapos.data.tasks import library as _library  # noqa: F401  (registers the tasks)
from extrapos.data.tasks.base import (
    Task,
    TaskBatch,
    Vocab,
    accuracy,
    get_task,
    list_tasks,
    pad_batches,
    predictions,
    register_task,
    score,
)

__all__ = [
    "Task",
    "TaskBatch",
    "Vocab",
    "accuracy",
    "get_task",
    "list_tasks",
    "pad_batches",
    "predictions",
    "register_task",
    "score",
]
