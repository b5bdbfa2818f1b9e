"""Look before you train: a task's numbers (``summarize``) and a picture grid (``write_preview``).

A site operator cannot share the data, so these are how they check, locally, that the
reader found what they expected (class balance, mask coverage, boxes on the right spots).
Drawing uses matplotlib's Agg canvas directly: no display, no global backend switch. What is
specific to a task type (its numbers, its overlays) comes from the type's ``summarize`` and
``draw``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample, TaskData
from umedpt.data.stats import describe
from umedpt.tasks import get_task_type


def summarize(task: TaskConfig, data: TaskData) -> dict[str, Any]:
    """Plain numbers about a loaded task (JSON-serialisable); the task type adds its own."""
    all_samples = [s for samples in data.splits.values() for s in samples]
    return {
        "task": task.name,
        "type": task.type,
        "classes": list(task.classes),
        "images": {split: len(samples) for split, samples in data.splits.items()},
        "image_size": task.image_size,
        "original_size": _size_stats(all_samples),
        "skipped": len(data.skipped),
        **get_task_type(task.type).summarize(task, data),
    }


def _size_stats(samples: list[Sample]) -> dict[str, Any]:
    sizes = [s.original_size for s in samples]
    if not sizes:
        return {"height": describe([]), "width": describe([]), "distinct": 0}
    return {
        "height": describe([h for h, _ in sizes]),
        "width": describe([w for _, w in sizes]),
        "distinct": len(set(sizes)),
    }


def write_preview(task: TaskConfig, data: TaskData, out_png: Path, n: int = 16) -> Path:
    """Draw up to ``n`` training samples (labels, translucent masks, named boxes) into a PNG."""
    pool = data.splits.get("train", []) or [s for v in data.splits.values() for s in v]
    # Evenly spaced, not the first n: readers return files grouped by class or folder.
    step = max(1, len(pool) // n)
    samples = pool[::step][:n]
    cols = max(1, math.ceil(math.sqrt(max(len(samples), 1))))
    rows = max(1, math.ceil(len(samples) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{task.name} ({task.type}, {sum(map(len, data.splits.values()))} images)")
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < len(samples):
            _draw_sample(ax, samples[i], task)
    if not samples:
        fig.text(0.5, 0.5, "no samples", ha="center", va="center")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")
    return out_png


def _draw_sample(ax: Any, sample: Sample, task: TaskConfig) -> None:
    ax.imshow(sample.image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(Path(sample.source.split("[")[0]).name, fontsize=8)
    get_task_type(task.type).draw(ax, sample, task)  # targets, and a title that names them
