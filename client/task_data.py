"""A site's tasks with their data: decoded once, then read from the site's disk cache.

Flower starts a new process for every message, so the decoded data is kept on the site's
disk (``<state_dir>/cache/``, :mod:`umedpt.data.cache`): only the first round decodes the
images. Within one process (a simulation worker serves many rounds of many sites) the
loaded tasks are kept in memory too. Each load is told in the site's log.
"""

from __future__ import annotations

import functools
import logging
import time

from umedpt.config import SiteConfig, TaskConfig, load_site_config
from umedpt.data.cache import site_cache_dir
from umedpt.data.loading import load_task
from umedpt.errors import ConfigError
from umedpt.training.trainer import TaskRun

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 10.0  # a long data load logs how far it is at most this often


@functools.lru_cache(maxsize=64)
def cached_runs(site_file: str, modified: float) -> tuple[TaskRun, ...]:
    """Every task of the site file ``site_file`` (as last ``modified``), with its data."""
    # Cached per process: a simulation worker serves many rounds of many sites (Ray gives
    # each message to whichever worker is free). Across processes (a deployed site gets a
    # new one per message), the site's disk cache saves the decoding.
    site = load_site_config(site_file)
    return tuple(load_run(site, task) for task in site.tasks)


def load_run(site: SiteConfig, task: TaskConfig) -> TaskRun:
    """Load one task through the site's disk cache, saying so in the site's log."""
    log.info("site %s: loading task %s (%s, %s)", site.name, task.name, task.format, task.path)
    loaded = load_task(task, cache_dir=site_cache_dir(site), on_progress=_ProgressLog(site, task))
    counts = ", ".join(f"{len(v)} {k}" for k, v in loaded.data.splits.items())
    if loaded.from_cache:
        how = f"from the cache {loaded.cache_file}"
    elif loaded.cache_file is not None:
        how = f"decoded; cached in {loaded.cache_file} for the next rounds"
    else:
        how = "decoded (no cache: see the warning above)"
    skipped = f", {len(loaded.data.skipped)} skipped" if loaded.data.skipped else ""
    log.info(
        "site %s: task %s: %s samples%s in %.1f s, %s",
        site.name,
        task.name,
        counts,
        skipped,
        loaded.seconds,
        how,
    )
    if not loaded.data.splits.get("train"):
        raise ConfigError(
            task.source, f"{task.field_prefix}.split", f"task '{task.name}' has no training samples"
        )
    return TaskRun.of(task, loaded.data)


class _ProgressLog:
    """Logs a long data load's progress at most every ``PROGRESS_EVERY_SECONDS``."""

    def __init__(self, site: SiteConfig, task: TaskConfig) -> None:
        self.site, self.task = site, task
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS and done < total:
            self.last = now
            log.info(
                "site %s: task %s: decoded %d of %d samples",
                self.site.name,
                self.task.name,
                done,
                total,
            )
