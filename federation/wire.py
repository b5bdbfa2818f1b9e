"""The federation's wire format, defined once: record names, metric and config keys.

The client, the server, the strategies, the report and the benchmarks import these names,
so that what one side writes the other side reads. The parameter-group names themselves
(``encoder.*``, ``blocks.<b>.*``, ``heads.<t>.*``) are the ML core's and live in
:mod:`umedpt.contract`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Record names inside a message's RecordDict.
SHARED_ARRAYS = "arrays"  # ArrayRecord: the shared weights (encoder + the site's blocks)
METRICS = "metrics"  # MetricRecord: a reply's scalars
CONFIG = "config"  # ConfigRecord: the round's settings
SITE_INFO = "site-info"  # ConfigRecord: a site's answer to the server's query

# ConfigRecord keys of the round's settings.
SERVER_ROUND = "server-round"  # set by Flower's strategies in every round's config
RUN_KEY = "run-key"  # names this run's local state folder at every site
PROXIMAL_MU = "proximal-mu"  # FedProx's mu, added by Flower's FedProx
COMPRESSION = "compression"  # the run's codec (federation.codecs): how the arrays travel

# MetricRecord keys of a reply.
NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights replies by this key
UNIT_WEIGHT = "unit-weight"  # worth 1 per site, for equal weighting
TRAIN_SECONDS = "train-seconds"
RESTORED_ROUND = "restored-round"  # the site round whose local state a reply started from
DP_EPSILON = "dp-epsilon"  # sample-level DP: the epsilon the site has spent so far
DP_DELTA = "dp-delta"  # ... and the delta it is accounted at
DP_TARGET_EPSILON = "dp-target-epsilon"  # ... the site's whole budget (its [privacy] table)
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"  # ... and the noise multiplier of this round

# ConfigRecord keys of SITE_INFO.
SITE_NAME = "site-name"
BLOCKS_USED = "blocks-used"  # comma-separated shared blocks the site trains
TASKS = "tasks"  # comma-separated task descriptors, see TaskDescriptor
EXAMPLES_PER_STEP = "examples-per-step"  # examples one local step trains on (sum of batch sizes)

LOSS = "loss"
TRAIN_LOSS = "train-loss"


def task_metric(task: str, metric: str) -> str:
    """The metric key of one task, e.g. ``lesions/accuracy``."""
    return f"{task}/{metric}"


def split_task_metric(key: str) -> tuple[str, str] | None:
    """``("lesions", "accuracy")`` from ``lesions/accuracy``; None for a site-level key."""
    task, sep, metric = key.partition("/")
    return (task, metric) if sep else None


@dataclass(frozen=True)
class TaskDescriptor:
    """What a site tells the server about one task: ``name:type:primary-metric``."""

    name: str
    type: str
    metric: str

    def encode(self) -> str:
        return f"{self.name}:{self.type}:{self.metric}"

    @classmethod
    def decode(cls, text: str) -> TaskDescriptor:
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"a task descriptor is 'name:type:metric', got {text!r}")
        return cls(*parts)


def encode_tasks(tasks: Iterable[TaskDescriptor]) -> str:
    return ",".join(t.encode() for t in tasks)


def decode_tasks(text: str) -> list[TaskDescriptor]:
    """Parse a site's TASKS value; malformed entries are skipped (the site is still named)."""
    found = []
    for entry in str(text).split(","):
        try:
            found.append(TaskDescriptor.decode(entry))
        except ValueError:
            continue
    return found
