"""Shared test helpers: tiny in-memory tasks whose labels are learnable, warm-start sources
and readers of what the trackers wrote.

The samples are each task type's own ``synthetic_samples``, so a new task type brings its
test data with it. Test modules import helpers from here, never from each other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from umedpt import contract
from umedpt.checkpoint import save_checkpoint
from umedpt.config import TaskConfig
from umedpt.data.samples import Sample, TaskData
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.tasks import get_task_type
from umedpt.training.trainer import TaskRun

SIZE = 64


def synthetic_samples(task_type: str, n: int, generator: torch.Generator) -> list[Sample]:
    """``n`` learnable samples of ``task_type`` at ``SIZE`` pixels, drawn from ``generator``."""
    return get_task_type(task_type).synthetic_samples(n, generator, image_size=SIZE)


def make_task(name: str, task_type: str, batch_size: int = 8) -> TaskConfig:
    classes = get_task_type(task_type).synthetic_classes
    return TaskConfig(name, task_type, "memory", Path("memory"), classes, batch_size=batch_size)


def make_run(
    name: str, task_type: str, *, n_train: int = 32, n_val: int = 16, seed: int = 0
) -> TaskRun:
    generator = torch.Generator().manual_seed(seed)
    data = TaskData(
        {
            "train": synthetic_samples(task_type, n_train, generator),
            "val": synthetic_samples(task_type, n_val, generator),
            "test": [],
        }
    )
    return TaskRun(make_task(name, task_type), data)


# -- warm-start sources (--init) ----------------------------------------------------------
def source_model(seed: int = 11) -> UMedPTModel:
    """A tiny model with a classification block and head, every shared tensor perturbed:
    equal initial values (norms at 1/0) cannot hide a key that was not loaded."""
    model = UMedPTModel(model_config("tiny"), [make_task("pre", "classification")], seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and contract.is_shared(name):
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def write_source(folder: Path, seed: int = 11) -> tuple[Path, UMedPTModel]:
    """A source checkpoint as `pretrain` writes one: encoder, one block, one head."""
    model = source_model(seed)
    return save_checkpoint(folder, model, meta={"kind": "test"}), model


def assert_group_equal(got: dict, want: dict, group: str) -> None:
    want = contract.select(want, [group])
    assert want, group
    for key, value in want.items():
        assert torch.equal(got[key], value), key


# -- what the trackers wrote -------------------------------------------------------------
def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local MLflow file store (mlflow-skinny has no database store of its own)."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()
