"""Task types: each owns its head, its loss, its metrics and how its batches are built."""

from umedpt.tasks.base import TASK_TYPES, Batch, TaskMetrics, TaskType, get_task_type

__all__ = ["TASK_TYPES", "Batch", "TaskMetrics", "TaskType", "get_task_type"]
