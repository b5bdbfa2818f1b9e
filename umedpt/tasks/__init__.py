"""Task types: each owns its targets, head, loss, metrics, summary and preview drawing.

Importing this package registers every built-in type (the modules below register
themselves); ``get_task_type(name)`` then finds them.
"""

# Importing a built-in type's module registers it.
from umedpt.tasks import (  # noqa: F401
    classification,
    detection,
    multilabel,
    segmentation,
    self_supervised,
)
from umedpt.tasks.base import (
    TASK_TYPES,
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    block_builder,
    get_task_type,
    register_task_type,
    shared_blocks,
    total_loss,
)

__all__ = [
    "TASK_TYPES",
    "Batch",
    "LossComponents",
    "TaskMetrics",
    "TaskType",
    "block_builder",
    "get_task_type",
    "register_task_type",
    "shared_blocks",
    "total_loss",
]
