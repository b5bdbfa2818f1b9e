"""`umedpt-fl simulate` as a user runs it: the command in a child process, tracked.

Shared by the simulation tests; test modules import this, never each other.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from tests.processes import Tracked


class Simulation(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    process: Tracked  # the command, with everything it started


def simulate(out: Path, sites: list[Path], *extra: str) -> Simulation:
    """Two rounds of one local step on ``sites`` (``extra`` flags win), run to the end."""
    command = [sys.executable, "-m", "umedpt_fl.cli", "simulate", "--out", str(out)]
    for site in sites:
        command += ["--site", str(site)]
    command += ["--rounds", "2", "--local-steps", "1", *extra]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = Tracked(command, stdout=stdout, stderr=stderr)
        code = process.wait(600)
        outputs = []
        for output in (stdout, stderr):
            output.seek(0)
            outputs.append(output.read().decode(errors="replace"))
    return Simulation(code, *outputs, process)
