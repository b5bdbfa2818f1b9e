"""Test configuration: keep torch to the CI machine's two cores, make `tests.helpers` importable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from federation.flower_env import disable_flower_telemetry

# Two cores (CI): one torch thread per xdist worker, two without workers; more threads than
# cores makes torch's worker threads spin against each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
disable_flower_telemetry()  # the tests import Flower directly, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
