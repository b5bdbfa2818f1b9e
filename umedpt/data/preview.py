"""Look before you train: a task's numbers (``summarize``) and a picture grid (``write_preview``).

A site operator cannot share the data, so these are how they check, locally, that the
reader found what they expected (class balance, mask coverage, boxes on the right spots).
Drawing uses matplotlib's Agg canvas directly: no display, no global backend switch.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample, TaskData


def summarize(task: TaskConfig, data: TaskData) -> dict[str, Any]:
    """Plain numbers about a loaded task (JSON-serialisable)."""
    all_samples = [s for samples in data.splits.values() for s in samples]
    summary: dict[str, Any] = {
        "task": task.name,
        "type": task.type,
        "classes": list(task.classes),
        "images": {split: len(samples) for split, samples in data.splits.items()},
        "image_size": task.image_size,
        "original_size": _size_stats(all_samples),
        "skipped": len(data.skipped),
    }
    if task.type == "classification":
        summary["class_counts"] = {
            split: _class_counts([s.label for s in samples if s.label is not None], task)
            for split, samples in data.splits.items()
        }
    elif task.type == "segmentation":
        summary["mask_foreground_fraction"] = _stats(
            [float((s.mask > 0).float().mean()) for s in all_samples if s.mask is not None]
        )
    elif task.type == "detection":
        counts = [0 if s.boxes is None else len(s.boxes) for s in all_samples]
        summary["boxes_per_image"] = {**_stats(counts), "images_without_boxes": counts.count(0)}
        labels = [int(v) for s in all_samples if s.box_labels is not None for v in s.box_labels]
        summary["box_counts"] = _class_counts(labels, task)
    return summary


def _class_counts(labels: list[int], task: TaskConfig) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(task.classes)}


def _stats(values: list[float] | list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0.0, "mean": 0.0, "median": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": float(arr.min()),
        "mean": round(float(arr.mean()), 4),
        "median": float(np.median(arr)),
        "max": float(arr.max()),
    }


def _size_stats(samples: list[Sample]) -> dict[str, Any]:
    sizes = [s.original_size for s in samples]
    if not sizes:
        return {"height": _stats([]), "width": _stats([]), "distinct": 0}
    return {
        "height": _stats([h for h, _ in sizes]),
        "width": _stats([w for _, w in sizes]),
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
    title = Path(sample.source.split("[")[0]).name
    if sample.label is not None:
        title = task.classes[sample.label]
    if sample.mask is not None:
        mask = sample.mask.numpy().astype(np.float32)
        overlay = np.ma.masked_where(mask == 0, mask)
        ax.imshow(overlay, cmap="autumn", alpha=0.45, vmin=0, vmax=max(1, len(task.classes)))
    if sample.boxes is not None and sample.box_labels is not None:
        for box, label in zip(sample.boxes.tolist(), sample.box_labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            color = f"C{label % 10}"
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1))
            ax.text(x0, y0, task.classes[label], color=color, fontsize=6, va="bottom")
        title = f"{len(sample.boxes)} boxes"
    ax.set_title(title, fontsize=8)
