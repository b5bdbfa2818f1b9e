"""Codecs (federation.codecs): round trips, int8's error bound, error feedback, hostile
payloads, and how the server and the rules treat compressed updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from client.refusals import refusal_of
from client.round_state import RoundFolders, load_residual, save_residual
from federation import wire
from federation.codecs import (
    SCALE_SUFFIX,
    PayloadError,
    codec_names,
    create_codec,
    encode_with_feedback,
)
from federation.codecs.bf16 import from_bf16_bits, to_bf16_bits
from federation.compression import (
    change_from,
    decode_update,
    decode_weights,
    encode_weights,
    to_record,
)
from federation.reasons import Refusal
from federation.settings import RunSettings
from server.rules import build_rule
from tests.federation.fakes import GLOBAL, SITES, ScriptedGrid, initial, make
from umedpt.errors import ConfigError


def rng_values(seed: int = 0, shape=(7, 5)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, shape).astype(np.float32)


def test_every_codec_is_registered_by_name() -> None:
    assert codec_names() == ("none", "fp16", "bf16", "int8")
    with pytest.raises(KeyError, match="valid names"):
        create_codec("int4")


def test_fp16_is_exact_on_values_fp16_represents() -> None:
    values = {"encoder.w": rng_values().astype(np.float16).astype(np.float32)}
    codec = create_codec("fp16")
    encoded = codec.encode(values)
    assert encoded.entries["encoder.w"].dtype == np.float16 and encoded.fallbacks == []
    assert encoded.nbytes == values["encoder.w"].nbytes // 2
    np.testing.assert_array_equal(
        codec.decode(encoded.entries, values)["encoder.w"], values["encoder.w"]
    )


def test_fp16_falls_back_to_float32_for_a_tensor_beyond_its_range() -> None:
    big = np.array([1.0, -70000.0, 3.0], np.float32)  # fp16's largest is 65504
    values = {"encoder.big": big, "encoder.small": np.array([0.5, 0.25], np.float32)}
    encoded = create_codec("fp16").encode(values)
    assert encoded.fallbacks == ["encoder.big"]
    assert encoded.entries["encoder.big"].dtype == np.float32
    assert encoded.entries["encoder.small"].dtype == np.float16
    decoded = create_codec("fp16").decode(encoded.entries, values)
    np.testing.assert_array_equal(decoded["encoder.big"], big)  # not inf


def test_bf16_is_torchs_bfloat16_and_exact_on_values_it_represents() -> None:
    raw = rng_values(1)
    bits = to_bf16_bits(raw)
    torch_bits = torch.from_numpy(raw).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, torch_bits)
    representable = from_bf16_bits(bits)
    np.testing.assert_array_equal(representable, torch.from_numpy(raw).bfloat16().float().numpy())
    codec = create_codec("bf16")
    values = {"encoder.w": representable}
    encoded = codec.encode(values)
    assert encoded.entries["encoder.w"].dtype == np.uint16
    np.testing.assert_array_equal(codec.decode(encoded.entries, values)["encoder.w"], representable)
    # any other value: within half a unit in the 8th significant bit
    error = np.abs(
        codec.decode(codec.encode({"encoder.w": raw}).entries, values)["encoder.w"] - raw
    )
    assert np.all(error <= np.abs(raw) * 2.0**-8)


def test_int8_is_within_half_a_step_per_element_and_keeps_zero_and_the_peak() -> None:
    v = np.array([0.0, 0.3, -1.27, 0.005, 0.9], np.float32)
    codec = create_codec("int8")
    encoded = codec.encode({"encoder.w": v})
    q, scale = encoded.entries["encoder.w"], encoded.entries["encoder.w" + SCALE_SUFFIX]
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (1,)
    assert scale[0] == np.float32(1.27 / 127)
    assert q.tolist() == [0, 30, -127, 0, 90]
    decoded = codec.decode(encoded.entries, {"encoder.w": v})["encoder.w"]
    s = float(scale[0])
    assert np.all(np.abs(decoded - v) <= s / 2 + 127 * s * 2.0**-24)
    for seed in range(5):  # random tensors: the same bound
        r = rng_values(seed, (64, 9))
        enc = codec.encode({"encoder.w": r})
        s = float(enc.entries["encoder.w" + SCALE_SUFFIX][0])
        dec = codec.decode(enc.entries, {"encoder.w": r})["encoder.w"]
        assert np.max(np.abs(dec - r)) <= s / 2 + 127 * s * 2.0**-24
    zero = codec.encode({"encoder.z": np.zeros(3, np.float32)})
    assert zero.entries["encoder.z" + SCALE_SUFFIX][0] == 0
    with pytest.raises(FloatingPointError):
        codec.encode({"encoder.w": np.array([np.nan], np.float32)})


def test_non_float_tensors_travel_as_they_are_in_every_codec() -> None:
    values = {"encoder.count": np.array([7], np.int64), "encoder.w": rng_values()}
    for name in codec_names():
        encoded = create_codec(name).encode(values)
        assert encoded.entries["encoder.count"].dtype == np.int64
        assert create_codec(name).decode(encoded.entries, values)["encoder.count"].tolist() == [7]


def test_a_0d_tensor_keeps_its_shape_through_every_codec_and_record() -> None:
    """BatchNorm's ``num_batches_tracked`` is 0-d (and a scalar parameter may be): it must
    come back 0-d from the server's record, the site's reply and the server's decoding
    (numpy's ``ascontiguousarray`` would make it 1-d, which the site's model refuses)."""
    values = {"encoder.steps": np.array(7, np.int64), "encoder.scale": np.array(0.5, np.float32)}
    for name in codec_names():
        codec = create_codec(name)
        record, _ = encode_weights(values, name)
        received = decode_weights(record, name)
        assert {k: v.shape for k, v in received.items()} == {k: () for k in values}, name
        sent = change_from(received, received) if codec.sends_change else received
        entries = {k: v.numpy() for k, v in to_record(codec.encode(sent)).items()}
        weights = decode_update(entries, values, list(values), codec)
        assert {k: v.shape for k, v in weights.items()} == {k: () for k in values}, name
        assert weights["encoder.steps"] == 7 and weights["encoder.scale"] == 0.5, name


def test_error_feedback_sums_to_the_true_changes_up_to_one_rounds_error() -> None:
    codec = create_codec("int8")
    changes = [{"encoder.w": rng_values(seed, (50,)) * (1 + seed % 3)} for seed in range(20)]
    residual = None
    sent = np.zeros(50, np.float64)
    plain = np.zeros(50, np.float64)  # the same changes without feedback
    for change in changes:
        encoded, residual = encode_with_feedback(codec, change, residual)
        sent += codec.decode(encoded.entries, change)["encoder.w"]
        plain += codec.decode(codec.encode(change).entries, change)["encoder.w"]
        last_scale = float(encoded.entries["encoder.w" + SCALE_SUFFIX][0])
    true = np.sum([c["encoder.w"].astype(np.float64) for c in changes], axis=0)
    # sum(decoded) = sum(true) - last residual, and the residual is one round's error
    np.testing.assert_allclose(sent, true - residual["encoder.w"], atol=1e-6)
    assert np.max(np.abs(residual["encoder.w"])) <= last_scale / 2 + 1e-6
    assert np.max(np.abs(sent - true)) < np.max(np.abs(plain - true))


def test_a_residual_that_does_not_fit_is_reset() -> None:
    codec = create_codec("int8")
    change = {"encoder.w": rng_values(0, (4,))}
    wrong = {"encoder.w": np.ones(5, np.float32)}
    with_wrong, _ = encode_with_feedback(codec, change, wrong)
    without, _ = encode_with_feedback(codec, change, None)
    for key in without.entries:
        np.testing.assert_array_equal(with_wrong.entries[key], without.entries[key])


def test_residuals_are_kept_in_the_round_folder_the_site_restores(tmp_path) -> None:
    folders = RoundFolders(tmp_path)
    assert load_residual(folders, 5) is None
    save_residual(folders, 2, {"encoder.w": np.ones(3, np.float32)})
    (tmp_path / "round-00003").mkdir()  # round 3 kept no residual (e.g. masked)
    assert load_residual(folders, 3)[0] == 2
    assert load_residual(folders, 4) is None  # the newest round kept none: reset
    assert load_residual(folders, 2) is None  # repeated round 2: never its own residual


def good_int8(reference: dict[str, np.ndarray], change: float) -> dict[str, Array]:
    changes = {k: np.full_like(v, change) for k, v in reference.items()}
    return {k: Array(v) for k, v in create_codec("int8").encode(changes).entries.items()}


HOSTILE = {
    "missing key": lambda e: {k: v for k, v in e.items() if k != "encoder.w"},
    "wrong dtype": lambda e: {**e, "encoder.w": e["encoder.w"].astype(np.float64)},
    "wrong scale shape": lambda e: {**e, "encoder.w@scale": np.ones(2, np.float32)},
    "NaN scale": lambda e: {**e, "encoder.w@scale": np.array([np.nan], np.float32)},
    "negative scale": lambda e: {**e, "encoder.w@scale": np.array([-1.0], np.float32)},
    "missing scale": lambda e: {k: v for k, v in e.items() if k != "encoder.w@scale"},
    "wrong shape": lambda e: {**e, "encoder.w": np.zeros((3, 2), np.int8)},
    "extra entry": lambda e: {**e, "encoder.x": np.zeros(1, np.int8)},
}
REASONS = {
    "missing key": "'encoder.w' is missing",
    "wrong dtype": "'encoder.w' is float64, expected int8",
    "wrong scale shape": "'encoder.w@scale' has shape [2], expected [1]",
    "NaN scale": "'encoder.w@scale' is nan",
    "negative scale": "'encoder.w@scale' is -1.0",
    "missing scale": "'encoder.w@scale' is missing",
    "wrong shape": "'encoder.w' has shape [3, 2], expected [2, 3]",
    "extra entry": "unexpected entry ['encoder.x']",
}


@pytest.mark.parametrize("fault", sorted(HOSTILE))
def test_hostile_payloads_are_refused_naming_the_key(fault: str) -> None:
    reference = {"encoder.w": np.zeros((2, 3), np.float32)}
    entries = create_codec("int8").encode({"encoder.w": np.ones((2, 3), np.float32)}).entries
    with pytest.raises(PayloadError) as caught:
        decode_update(HOSTILE[fault](entries), reference, ["encoder.w"], create_codec("int8"))
    assert REASONS[fault] in str(caught.value)
    # a site that cannot decode what it was sent refuses with the reason class alone
    assert refusal_of(caught.value) is Refusal.MALFORMED_PAYLOAD


def test_the_server_decodes_int8_changes_and_rejects_a_malformed_one() -> None:
    strategy = make("fedavg", compression="int8", weighting="equal")
    globals_ = {k: v for k, v in GLOBAL.items()}

    def tamper(node, arrays, metrics):
        sent = {k: globals_[k] for k in arrays}
        entries = good_int8(sent, 0.5 if node != 33 else 1.0)
        if node == 33:  # a NaN scale: rejected by name
            entries["encoder.w@scale"] = Array(np.array([np.nan], np.float32))
        return RecordDict({wire.METRICS: metrics, wire.SHARED_ARRAYS: ArrayRecord(entries)})

    grid = ScriptedGrid(SITES, tamper=tamper)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=5)
    record = strategy.rounds[1]
    assert record.rejected == [
        ("c", "training: malformed payload (int8): 'encoder.w@scale' is nan, expected a "
              "finite scale >= 0")
    ]  # fmt: skip
    # the other two sites' change of 0.5 (exact in int8: it is the peak) on the globals
    np.testing.assert_array_equal(result.arrays["encoder.w"].numpy(), np.full((2, 3), 0.5))
    assert set(record.bytes_received) == {"a", "b"}  # as they travelled (int8 + scales)
    sent_down = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(m.content[wire.CONFIG][wire.COMPRESSION] == "int8" for m in sent_down)
    assert all(
        a.dtype == "uint16" for m in sent_down for a in m.content[wire.SHARED_ARRAYS].values()
    )  # int8 runs send their weights in bf16


def test_the_downlink_of_each_codec() -> None:
    weights = {"encoder.w": rng_values()}
    for name, dtype in [
        ("none", "float32"),
        ("fp16", "float16"),
        ("bf16", "uint16"),
        ("int8", "uint16"),
    ]:
        record, _ = encode_weights(weights, name)
        assert record["encoder.w"].dtype == dtype, name


def test_rules_refuse_int8_under_secure_aggregation_and_bad_sampling() -> None:
    with pytest.raises(ConfigError, match="compression.*secure aggregation sums masked"):
        build_rule(RunSettings(compression="int8", secure_aggregation=True), query_timeout=1)
    build_rule(RunSettings(compression="bf16", secure_aggregation=True), query_timeout=1)
    with pytest.raises(ConfigError, match="sites-per-round"):
        build_rule(RunSettings(sites_per_round=1, min_sites=2), query_timeout=1)
    with pytest.raises(ConfigError, match="sites-per-round/fraction"):
        RunSettings(sites_per_round=2, fraction=0.5)
    with pytest.raises(ConfigError, match="compression"):
        RunSettings(compression="int4")


def test_a_genuine_int8_or_uint16_tensor_is_not_taken_for_codec_output() -> None:
    values = {
        "encoder.w": rng_values(),
        "encoder.q": np.array([-3, 5], np.int8),
        "encoder.bits": np.array([1, 2, 3], np.uint16),
    }
    for name in ("fp16", "bf16"):
        encoded = create_codec(name).encode(values)
        decoded = create_codec(name).decode(encoded.entries)  # as a site decodes the weights
        assert decoded["encoder.q"].dtype == np.int8 and decoded["encoder.q"].tolist() == [-3, 5]
        assert decoded["encoder.bits"].tolist() == [1, 2, 3]
        assert decoded["encoder.w"].dtype == np.float32
