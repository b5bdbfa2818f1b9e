"""Same seed, same weights, bit for bit: across fresh processes with other hash seeds.

Benchmark comparisons of a few points mean something only if a rerun of the same command
gives the same numbers. Python's ``hash()`` is salted per process (``PYTHONHASHSEED``), so
anything that iterates a set or dict in hash order, or draws from an unseeded RNG, shows up
as different weights between two processes, never within one. Each process runs a
federation (2 rounds, the real ClientApp in-process) and a centralized ``pretrain`` on
two demo sites (classification and detection), with 1 torch thread (the thread count
changes float reduction order, so it is held fixed, as the benchmarks do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import hashlib, json, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from safetensors.torch import load_file

from client.app import app as client_app
from server.federation import run_federation
from umedpt.config import load_site_config
from umedpt.pretrain import PretrainConfig, pretrain
from umedpt_fl.inprocess import ClientAppGrid
from federation.settings import RunSettings

out, sites = Path(sys.argv[1]), sys.argv[2:]
settings = RunSettings(
    num_server_rounds=2,
    local_steps=1,
    out_dir=str(out / "fed"),
    site_configs=",".join(sites),
    state_root=str(out / "fed" / "sites"),
    run_key="determinism",
    seed=0,
    eval_every=2,  # evaluate once, after the last round
)
nodes = {100 + i: {"partition-id": i} for i in range(len(sites))}
run_federation(ClientAppGrid(client_app, nodes, settings.to_run_config()), settings)
config = PretrainConfig(preset="tiny", steps=2, eval_every=2, seed=0, device="cpu")
pretrain([load_site_config(s) for s in sites], config, out / "central")
digests = {}
for file in sorted((out / "fed" / "global").glob("*.safetensors")) + sorted(
    (out / "central" / "checkpoint").glob("*.safetensors")
):
    for key, tensor in sorted(load_file(str(file)).items()):
        digests[f"{file.parent.parent.name}:{key}"] = hashlib.sha256(
            tensor.contiguous().numpy().tobytes()
        ).hexdigest()
print(json.dumps(digests))
"""


def _digests(out: Path, sites: list[Path], hash_seed: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONHASHSEED": hash_seed,
        "PYTHONPATH": str(ROOT),
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(out), *map(str, sites)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_same_seed_gives_bitwise_same_weights_in_fresh_processes(demo_sites, tmp_path) -> None:
    sites = [demo_sites[0], demo_sites[2]]  # classification and detection
    first = _digests(tmp_path / "a", sites, "1")
    second = _digests(tmp_path / "b", sites, "2")
    assert any(k.startswith("fed:") for k in first) and any(k.startswith("central:") for k in first)
    assert first.keys() == second.keys()
    differing = sorted(k for k in first if first[k] != second[k])
    assert not differing, f"{len(differing)} tensors differ, first: {differing[:5]}"
