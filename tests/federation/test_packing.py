"""Packed arrays (federation.packing): exact round trips, hostile manifests refused by key."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from federation.codecs import PayloadError
from federation.packing import (
    DATA,
    MANIFEST,
    PackingGrid,
    is_packed,
    pack,
    pack_message,
    packing_mod,
    unpack,
)
from umedpt_fl import inprocess  # noqa: F401 - sets Flower's task identity, as a ServerApp has

RNG = np.random.default_rng(0)
# Every dtype a codec writes or a model holds: float32 weights, fp16, bf16 bits (uint16),
# int8 and its float32 scales, int64 counters, bool masks; and odd shapes.
ENTRIES = {
    "encoder.w": RNG.standard_normal((3, 4, 5)).astype(np.float32),
    "encoder.h": RNG.standard_normal(7).astype(np.float16),
    "encoder.b": RNG.integers(0, 2**16, 9).astype(np.uint16),
    "encoder.q": RNG.integers(-128, 128, (2, 3)).astype(np.int8),
    "encoder.q@scale": np.array(0.25, np.float32),  # 0-d
    "encoder.n": np.array([42], np.int64),
    "encoder.m": np.array([True, False, True]),
    "encoder.d": RNG.standard_normal(3).astype(np.float64),
    "encoder.u": np.arange(5, dtype=np.uint8),
    "encoder.empty": np.zeros((0, 4), np.float32),
}


def test_round_trip_is_exact_for_every_dtype_in_order() -> None:
    record = pack(ENTRIES)
    assert is_packed(record) and list(record.keys()) == [MANIFEST, DATA]
    assert len(record[DATA].data) - 128 == sum(v.nbytes for v in ENTRIES.values())  # npy header
    out = unpack(record)
    assert list(out) == list(ENTRIES)
    for key, value in ENTRIES.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape, key
        assert out[key].tobytes() == value.tobytes(), key
        assert out[key].flags.writeable and out[key].flags.aligned


def test_big_endian_and_object_arrays_do_not_travel_packed() -> None:
    with pytest.raises(ValueError, match="'x'"):
        pack({"x": np.array([1.0], ">f4")})
    with pytest.raises(ValueError, match="'o'"):
        pack({"o": np.array([object()])})


def forged(entries: list, data: bytes, extra: dict | None = None) -> ArrayRecord:
    text = json.dumps({"version": 1, "entries": entries}).encode()
    arrays = {
        MANIFEST: Array(np.frombuffer(text, np.uint8).copy()),
        DATA: Array(np.frombuffer(data, np.uint8).copy()),
    }
    return ArrayRecord({**arrays, **(extra or {})})


F4 = np.dtype(np.float32).str
HOSTILE = {
    "twice": ([["a", F4, [1], 0], ["a", F4, [1], 4]], b"\0" * 8, "'a': packed twice"),
    "gap": ([["a", F4, [1], 0], ["b", F4, [1], 8]], b"\0" * 12, "'b': offset 8, expected 4"),
    "overlap": ([["a", F4, [2], 0], ["b", F4, [1], 4]], b"\0" * 12, "'b': offset 4"),
    "short": ([["a", F4, [1], 0], ["b", F4, [4], 4]], b"\0" * 8, "'b': needs 16 bytes"),
    "left over": ([["a", F4, [1], 0]], b"\0" * 9, "5 bytes left over"),
    "object": ([["a", "|O", [1], 0]], b"\0" * 8, "'a': dtype '|O'"),
    "big endian": ([["a", ">f4", [1], 0]], b"\0" * 4, "'a': dtype '>f4'"),
    "negative": ([["a", F4, [-1], 0]], b"", "'a': shape"),
    "float size": ([["a", F4, [1.5], 0]], b"\0" * 8, "'a': shape"),
    "huge": ([["a", F4, [2, 2, 2], 0]], b"\0" * 4, "'a': needs 32 bytes"),
    "a side beyond the data": ([["a", F4, [0, 2**62, 2**62], 0]], b"", "'a': shape"),
    "a list for a dtype": ([["a", [], [1], 0]], b"\0" * 4, "'a': dtype []"),
    "bool not 0 or 1": ([["a", "|b1", [2], 0]], b"\x01\x07", "'a': bool values"),
    "not an entry": ([["a", F4, [1]]], b"\0" * 4, "entry 0 is not"),
}


def test_a_manifest_nested_too_deep_or_too_long_or_of_version_true_is_refused() -> None:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    record = ArrayRecord(
        {MANIFEST: Array(np.frombuffer(deep, np.uint8).copy()), DATA: Array(np.zeros(0, np.uint8))}
    )
    with pytest.raises(PayloadError, match="not JSON"):
        unpack(record)
    with pytest.raises(PayloadError, match="entries, at most"):
        unpack(forged([["k", F4, [0], 0]] * 70_000, b""))
    with pytest.raises(PayloadError, match="expected version 1"):
        unpack(_with_version(True))


def _with_version(version: object) -> ArrayRecord:
    text = json.dumps({"version": version, "entries": []}).encode()
    return ArrayRecord(
        {MANIFEST: Array(np.frombuffer(text, np.uint8).copy()), DATA: Array(np.zeros(0, np.uint8))}
    )


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_manifests_are_refused_naming_the_key(case: str) -> None:
    entries, data, expected = HOSTILE[case]
    with pytest.raises(PayloadError, match=re.escape(expected)):
        unpack(forged(entries, data))


def test_not_json_extra_keys_and_wrong_dtypes_are_refused() -> None:
    bad = ArrayRecord(
        {
            MANIFEST: Array(np.frombuffer(b"{nope", np.uint8).copy()),
            DATA: Array(np.zeros(0, np.uint8)),
        }
    )
    with pytest.raises(PayloadError, match=f"'{MANIFEST}': not JSON"):
        unpack(bad)
    record = forged([], b"", extra={"encoder.w": Array(np.zeros(1, np.float32))})
    assert not is_packed(record)
    with pytest.raises(PayloadError, match="a packed record holds"):
        unpack(record)
    wrong = ArrayRecord(
        {MANIFEST: Array(np.zeros(2, np.float32)), DATA: Array(np.zeros(0, np.uint8))}
    )
    with pytest.raises(PayloadError, match=f"'{MANIFEST}': expected 1-d uint8"):
        unpack(wrong)


def message(kind: str, arrays: dict[str, np.ndarray]) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "config": ConfigRecord({"server-round": 1})})  # fmt: skip
    return Message(content, dst_node_id=7, message_type=kind)


def context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize("kind, reply_packed", [("train", True), ("train.collect", False)])
def test_site_mod_unpacks_and_packs_a_plain_train_reply_only(kind: str, reply_packed: bool) -> None:
    sent = message(kind, ENTRIES)
    assert pack_message(sent)
    seen = {}

    def handler(msg: Message, _: Context) -> Message:
        seen.update({k: v.numpy() for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    reply = packing_mod(sent, context(), handler)
    assert list(seen) == list(ENTRIES)  # the handler saw plain arrays
    assert is_packed(reply.content["arrays"]) is reply_packed


def test_site_mod_refuses_a_hostile_message_naming_the_key() -> None:
    sent = message("train", {"x": np.zeros(1, np.float32)})
    sent.content["arrays"] = forged([["encoder.w", F4, [3], 0]], b"\0" * 4)
    with pytest.raises(PayloadError, match="'encoder.w': needs 12 bytes"):
        packing_mod(sent, context(), lambda m, c: pytest.fail("handler ran"))


class EchoGrid:
    """Pushes by setting ids (as Flower's grids do) and answers with ``answer(message)`` from
    its ``late``-th poll on (a site still training before)."""

    def __init__(self, answer, late: int = 0) -> None:
        self.answer, self.late, self.pushed, self.polls = answer, late, [], 0

    def push_messages(self, messages):
        for n, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"id-{n}"
            self.pushed.append(m)
        return [m.metadata.message_id for m in messages]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))

    def pull_messages(self, message_ids):
        self.polls += 1
        if self.polls <= self.late:
            return []
        wanted = set(message_ids)
        return [self.answer(m) for m in self.pushed if m.metadata.message_id in wanted]


def test_replies_are_polled_quickly_and_a_timeout_returns_what_came() -> None:
    echo = EchoGrid(lambda m: Message(RecordDict(), reply_to=m), late=3)
    tic = time.monotonic()
    grid = PackingGrid(echo, poll_seconds=0.01)
    [reply] = grid.send_and_receive([message("train", ENTRIES)], timeout=30)
    assert reply.metadata.reply_to_message_id == "id-0" and echo.polls == 4
    assert time.monotonic() - tic < 2.0  # Flower's own loop sleeps 3 s per poll
    never = EchoGrid(lambda m: Message(RecordDict(), reply_to=m), late=10**9)
    grid = PackingGrid(never, poll_seconds=0.01)
    assert grid.send_and_receive([message("train", ENTRIES)], timeout=0.05) == []


def test_server_grid_packs_what_it_sends_and_unpacks_replies() -> None:
    def answer(m: Message) -> Message:
        values = unpack(m.content["arrays"])  # it travelled packed
        reply = Message(
            RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in values.items()})}),
            reply_to=m,
        )
        pack_message(reply)
        return reply

    inner = EchoGrid(answer)
    [reply] = PackingGrid(inner).send_and_receive([message("train", ENTRIES)])
    assert is_packed(inner.pushed[0].content["arrays"])
    got = reply.content["arrays"]
    assert list(got) == list(ENTRIES)
    assert all(got[k].numpy().tobytes() == v.tobytes() for k, v in ENTRIES.items())


def test_server_grid_turns_a_hostile_reply_into_an_error_naming_the_key() -> None:
    def answer(m: Message) -> Message:
        bad = forged([["encoder.w", F4, [1], 0]], b"\0" * 8)
        return Message(RecordDict({"arrays": bad}), reply_to=m)

    [reply] = PackingGrid(EchoGrid(answer)).send_and_receive([message("train", ENTRIES)])
    assert reply.has_error() and reply.metadata.reply_to_message_id == "id-0"
    assert reply.error.reason.startswith("malformed payload (packed arrays): ")
    assert "4 bytes left over" in reply.error.reason


def test_sites_sent_the_same_arrays_share_one_packed_buffer() -> None:
    arrays = ArrayRecord({k: Array(v) for k, v in ENTRIES.items()})
    sent = []
    for node in (1, 2, 3):
        content = RecordDict({"arrays": ArrayRecord(dict(arrays.items()))})
        sent.append(Message(content, dst_node_id=node, message_type="train"))
    echo = EchoGrid(lambda m: Message(RecordDict(), reply_to=m))
    PackingGrid(echo).send_and_receive(sent)
    records = [m.content["arrays"] for m in echo.pushed]
    assert all(is_packed(r) for r in records)
    data = [r[DATA] for r in records]
    assert data[0] is data[1] is data[2]  # one copy of the weights, not one per site


def test_a_malformed_reply_ends_its_wait_and_leaves_nothing_behind() -> None:
    bad = forged([["encoder.w", F4, [1], 0]], b"\0" * 8)
    echo = EchoGrid(lambda m: Message(RecordDict({"arrays": bad}), reply_to=m))
    grid = PackingGrid(echo, poll_seconds=0.01)
    [reply] = grid.send_and_receive([message("train", ENTRIES)], timeout=30)
    assert reply.has_error() and "4 bytes left over" in reply.error.reason
    assert echo.polls == 1 and grid._sent == {}


def test_the_server_grid_tells_registered_names_where_its_grid_knows_them(caplog) -> None:
    from flwr.proto.node_pb2 import NodeInfo

    from strategies.sites import registered_names

    class Registered(EchoGrid):
        def get_node_ids(self):
            return [7, 8]

        def get_nodes(self):
            return [NodeInfo(node_id=7, name="clinic-a"), NodeInfo(node_id=8, name="")]

    assert registered_names(PackingGrid(Registered(None))) == {7: "clinic-a"}
    # An in-process grid has no get_nodes: ids only, no warning in the log of every run.
    in_process = PackingGrid(inprocess.ClientAppGrid.__new__(inprocess.ClientAppGrid))
    in_process.grid.node_ids = [1, 2]
    with caplog.at_level("WARNING"):
        assert registered_names(in_process) == {}
        assert [n.node_id for n in in_process.get_nodes()] == [1, 2]
    assert "registered names" not in caplog.text
