"""One long-lived ClientApp host per site: torch and the project imported once, not per message.

Under Flower's default ``subprocess`` isolation a SuperNode starts ``flower-superexec``,
which starts a fresh ``flwr-clientapp`` process for every message; each imports torch,
timm and the project again (20-40 s on a busy 2-core machine, four times a round under
secure aggregation). With ``flower-supernode --isolation process`` the SuperNode starts
no executor and waits for one to ask its Runtime API for work. This module is that
executor: it imports :mod:`client.app` once, then asks the SuperNode for a task every
``poll`` seconds and runs each task in a child forked from itself, which starts with
everything imported and runs Flower's own ``run_clientapp`` (pull the message, run the
app, push the reply). A message thus still runs in a process of its own, as Flower's
per-message isolation promises (a crash or a leak stays in that message; per-node state
lives in ``context.state`` on the SuperNode, as before), without the start-up cost.

The host never runs torch itself (no thread pool exists when it forks), and it holds no
gRPC channel (the Runtime API is HTTP), so forking is safe. Its children stay in its
process group, so the supervision of :mod:`federation.processes` (stop, reaper) reaches
them, and each child also follows the supervising command (``follow_supervisor``).

Mirrors ``flwr.supercore.superexec.run_superexec`` of Flower 1.42.0 (AcquireTask loop);
check it on upgrade.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

# Before anything imports Flower or torch: no telemetry, and leave with the supervisor.
from federation.entry import enter_app_process

enter_app_process()

from client.message_clock import MESSAGE_PROCESS_ENV  # noqa: E402 - after the entry above

log = logging.getLogger("client.app_host")

POLL_SECONDS = 0.1  # how often an idle host asks its SuperNode for a task
CHILD_EXIT_TIMEOUT = 5.0  # seconds a stopping host gives a running message to finish
PULL_BACKOFF = (0.05, 0.25)  # first and longest wait for a message's arrays (seconds)


@dataclass(frozen=True)
class HostOptions:
    runtime_api_address: str  # the SuperNode's Runtime (ClientAppIo) API, HOST:PORT
    poll: float = POLL_SECONDS

    def __post_init__(self) -> None:
        if ":" not in self.runtime_api_address:
            raise ValueError(
                f"the Runtime API address must be HOST:PORT, got {self.runtime_api_address!r}"
            )
        if not 0.01 <= self.poll <= 60:
            raise ValueError(f"poll must be 0.01-60 seconds, got {self.poll}")


def warm_up() -> float:
    """Import what every message needs (torch, timm, Flower, the ClientApp); seconds spent."""
    tic = time.perf_counter()
    import client.app  # noqa: F401 - the point: imported here, once, before any fork

    return time.perf_counter() - tic


def pull_without_long_backoff() -> None:
    """Let this process poll its SuperNode for a message's objects every 0.05-0.25 s.

    Flower 1.42.0's SuperNode hands out a task as soon as the message's metadata is in,
    and only then pulls the message's arrays from the SuperLink
    (``_pull_and_store_message`` in ``flwr/supernode/start_client_internal.py``). An app
    that asks at once, as ours does, finds them missing and backs off 1, 2, 4, 8 then 10 s
    a try (``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``): up to 10 s of sleep on the
    round's critical path, per message. A fresh ``flwr-clientapp`` never saw it: its
    imports took longer than the SuperNode's pull. Mirrors
    ``flwr.supernode.runtime.run_clientapp.pull_task_input`` of Flower 1.42.0, which calls
    ``pull_and_inflate_object_from_tree`` by its module-level name.
    """
    import functools

    from flwr.supernode.runtime import run_clientapp

    run_clientapp.pull_and_inflate_object_from_tree = functools.partial(
        run_clientapp.pull_and_inflate_object_from_tree,
        initial_backoff=PULL_BACKOFF[0],
        backoff_cap=PULL_BACKOFF[1],
        # 500 tries of 0.25 s would give up after 2 minutes, where a slow uplink may take
        # longer: Flower's max_time (2 h) alone bounds the wait, as it did before.
        max_tries_per_object=None,
    )


def run_task(address: str, token: str, parent: int) -> int:
    """In a forked child: run one message with Flower's ClientApp runner; its exit code."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    from federation.processes import follow_supervisor

    follow_supervisor()  # the watch thread did not survive the fork
    pull_without_long_backoff()
    try:
        run_clientapp(runtime_api_address=address, token=token, insecure=True, parent_pid=parent)
    except SystemExit as exc:  # Flower's exit: a code, or a message (an error)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _child_of(address: str, token: str) -> int:
    """Fork a child that runs one message; its PID in the host."""
    host = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the host's loop
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.environ[MESSAGE_PROCESS_ENV] = "1"  # its timings count from the fork
            code = run_task(address, token, host)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # no atexit of the host's (its HTTP client, its handlers)
    return pid


class AppHost:
    """Ask the SuperNode for ClientApp tasks and run each in a forked, pre-imported child."""

    def __init__(self, options: HostOptions) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.options = options
        self.client = RuntimeHttpClient.from_server_address(
            server_address=options.runtime_api_address,
            insecure=True,  # loopback, to this site's own SuperNode (as Flower's SuperExec)
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        self.children: dict[int, float] = {}  # pid -> when forked (monotonic)

    def acquire(self) -> str | None:
        """A token for the next ClientApp task, or None when there is none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        response = self.client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        )
        if response.HasField("task") and response.token:
            return response.token
        return None

    def reap(self) -> None:
        """Collect finished children and say how long each message took in its process."""
        for pid, forked in list(self.children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del self.children[pid]
                code = os.waitstatus_to_exitcode(status)
                log.info(
                    "app host: message process %d done in %.1f s (exit code %d)",
                    pid,
                    time.monotonic() - forked,
                    code,
                )

    def serve(self) -> None:
        """Until stopped: one forked child per task the SuperNode hands out."""
        while True:
            self.reap()
            token = self.acquire()
            if token is None:
                time.sleep(self.options.poll)
                continue
            self.children[_child_of(self.options.runtime_api_address, token)] = time.monotonic()

    def close(self) -> None:
        """Give running messages a moment, then stop them; close the client."""
        deadline = time.monotonic() + CHILD_EXIT_TIMEOUT
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.app_host", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between asks")
    args = parser.parse_args(argv)
    options = HostOptions(args.runtime_api_address, args.poll)
    from flwr.common.logger import FLOWER_LOGGER

    seconds = warm_up()  # also routes the site's log lines (``client.*``) to Flower's log
    FLOWER_LOGGER.info(
        "app host %d: ClientApp imported in %.1f s; serving %s",
        os.getpid(),
        seconds,
        options.runtime_api_address,
    )
    host = AppHost(options)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        host.serve()
    finally:
        host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
