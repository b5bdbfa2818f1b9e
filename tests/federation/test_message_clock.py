"""Where a message's time goes (client.message_clock): stages, process start, the log's words."""

from __future__ import annotations

import os
import time

import pytest

from client.message_clock import (
    MESSAGE_PROCESS_ENV,
    MessageClock,
    describe,
    message_process_started,
    process_started,
)


def test_a_forked_process_starts_at_its_fork() -> None:
    read, write = os.pipe()
    before = time.time()
    pid = os.fork()
    if pid == 0:  # the child reports its own start, as a child of the app host would
        os.write(write, repr(process_started()).encode())
        os._exit(0)
    os.close(write)
    started = float(os.read(read, 100).decode())
    os.waitpid(pid, 0)
    assert before - 0.05 <= started <= time.time() + 0.05  # the kernel's tick: 10 ms
    assert process_started() < before - 0.5  # this (pytest's) process is older


def test_only_a_process_started_for_the_message_reports_its_start(monkeypatch) -> None:
    monkeypatch.delenv(MESSAGE_PROCESS_ENV, raising=False)
    assert message_process_started() is None  # pytest serves many messages
    monkeypatch.setenv(MESSAGE_PROCESS_ENV, "1")
    assert message_process_started() == pytest.approx(process_started())


def test_stages_in_order_with_the_rest_as_reply_built(monkeypatch) -> None:
    now = time.time()
    clock = MessageClock(created=now - 3.0, process=now - 1.0, entered=now - 0.5)
    with clock.stage("model_built"):
        time.sleep(0.02)
    clock.seconds.update(state_restored=0.1, trained=0.2)
    timings = clock.timings()
    assert list(timings) == [
        "received", "app_up", "model_built", "state_restored", "trained", "reply_built",
        "handler",
    ]  # fmt: skip
    assert timings["received"] == pytest.approx(2.0, abs=0.002)
    assert timings["app_up"] == pytest.approx(0.5, abs=0.002)
    assert 0.02 <= timings["model_built"] < 0.2
    inside = timings["model_built"] + 0.1 + 0.2 + timings["reply_built"]
    assert inside == pytest.approx(timings["handler"], abs=0.005)
    line = describe(timings)
    assert line.startswith("received 2.0 s, app process up 0.5 s, model built 0.0 s")
    assert "handler" not in line


def test_a_message_without_a_process_start_or_creation_time_leaves_those_out() -> None:
    clock = MessageClock(created=None, process=None)
    assert list(clock.timings()) == ["handler"]  # an evaluation before any stage
    clock = MessageClock(created=time.time() - 1.0, process=None)
    assert list(clock.timings()) == ["received", "handler"]
    assert clock.timings()["received"] == pytest.approx(1.0, abs=0.05)
