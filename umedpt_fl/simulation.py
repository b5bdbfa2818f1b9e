"""`umedpt-fl simulate`: a whole federation on one machine with Flower's simulation engine.

Uses Flower's in-process Ray simulation (``flwr.simulation.run_simulation``) so a round
costs no more than its sites' training plus messaging in memory; the same ServerApp
and ClientApp also run under ``flwr run .`` and on real SuperLink/SuperNodes.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from federation.settings import RUN_CONFIG_ENV, THREADS_ENV, RunSettings


class _DropDeprecationBanner(logging.Filter):
    """`run_simulation` is deprecated in favour of `flwr run`, whose SuperLink polls for
    replies every 3 s; we choose it knowingly for in-memory rounds, so users need not see
    the banner on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)


class SimulationFailedError(RuntimeError):
    """The simulated federation did not complete; the message says why."""


class SimulationUnavailableError(RuntimeError):
    """Flower's simulation engine (Ray) is not installed: it is an optional extra."""


def simulate(
    site_files: list[Path],
    settings: RunSettings,
    *,
    cpus_per_site: float = 1.0,
    gpus_per_site: float = 0.0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the federation of ``site_files``; returns the report (raises on failure)."""
    try:
        import ray
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise SimulationUnavailableError(
            f"simulate needs Flower's simulation engine ({exc}); install it with "
            "pip install 'umedpt-fl[simulation]' (or pip install -e \".[simulation]\")"
        ) from exc

    from client.app import app as client_app
    from server.app import app as server_app

    if not site_files:
        raise SimulationFailedError("no sites given")
    settings = replace(settings, site_configs=",".join(str(Path(f).resolve()) for f in site_files))
    out = Path(settings.out_dir)
    total_cpus = os.cpu_count() or 1
    previous = os.environ.get(RUN_CONFIG_ENV)
    os.environ[RUN_CONFIG_ENV] = settings.to_json()
    os.environ[THREADS_ENV] = str(max(1, int(cpus_per_site)))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray starts workers at nice 15; the sites' training would then starve on a busy host.
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    banner_filter = _DropDeprecationBanner()
    logging.getLogger("flwr").addFilter(banner_filter)
    error: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(site_files),
                backend_config={
                    "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus_per_site},
                    "init_args": {
                        "num_cpus": total_cpus,
                        "include_dashboard": False,
                        "logging_level": logging.INFO if verbose else logging.ERROR,
                        "log_to_driver": verbose,
                    },
                },
                verbose_logging=verbose,
            )
    except Exception as exc:  # Flower re-raises the ServerApp's exception
        error = exc
    finally:
        logging.getLogger("flwr").removeFilter(banner_filter)
        if previous is None:
            os.environ.pop(RUN_CONFIG_ENV, None)
        else:
            os.environ[RUN_CONFIG_ENV] = previous
        if ray.is_initialized():
            ray.shutdown()
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    if error is not None or report.get("status") != "completed":
        reason = f"{type(error).__name__}: {error}" if error else f"status {report.get('status')!r}"
        raise SimulationFailedError(f"the federated run failed ({reason}); see {out}")
    return report
