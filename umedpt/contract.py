"""The parameter-group contract, defined once, and the one check of weights against it.

Every parameter of a site's model lives under exactly one of three prefixes:

- ``encoder.``            the shared encoder, aggregated over all sites;
- ``blocks.<block>.``     a shared block, named by the task type that uses it,
                          aggregated only over the sites that use that block;
- ``heads.<task>.``       a task's own head, which never leaves its site.

Checkpoints, the federated client, the server and the strategies import these names
from here. The federation's own wire keys (record names, metric keys) are not the ML
core's business: they live in ``federation.wire``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

ENCODER = "encoder"
BLOCKS = "blocks"
HEADS = "heads"

T = TypeVar("T")


def group_of(name: str) -> str:
    """Return the group of a parameter name: ``encoder``, ``blocks.<b>`` or ``heads.<t>``.

    Raises ValueError for a name outside the contract, so a module added in the
    wrong place is caught by tests instead of silently leaking (or not travelling).
    """
    parts = name.split(".")
    if parts[0] == ENCODER and len(parts) > 1:
        return ENCODER
    if parts[0] in (BLOCKS, HEADS) and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    raise ValueError(
        f"parameter '{name}' is outside the parameter-group contract "
        "(expected 'encoder.*', 'blocks.<block>.*' or 'heads.<task>.*')"
    )


def is_shared(name: str) -> bool:
    """True for weights that travel to the server (encoder and shared blocks)."""
    return not group_of(name).startswith(HEADS + ".")


def block_of(group: str) -> str | None:
    """The block name of a ``blocks.<b>`` group, else None."""
    prefix = BLOCKS + "."
    return group[len(prefix) :] if group.startswith(prefix) else None


def select(state: Mapping[str, T], groups: Iterable[str]) -> dict[str, T]:
    """Keep the entries of ``state`` whose group is one of ``groups`` (order preserved)."""
    wanted = set(groups)
    return {k: v for k, v in state.items() if group_of(k) in wanted}


def shared_only(state: Mapping[str, T]) -> dict[str, T]:
    """Keep only the shared entries (encoder and blocks) of a state dict."""
    return {k: v for k, v in state.items() if is_shared(k)}


def dtype_name(value: Any) -> str:
    """``float32`` for a torch tensor, a numpy array or a Flower Array alike."""
    dtype = value.dtype
    return str(dtype).removeprefix("torch.")


def state_mismatch(
    received: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    ordered: bool = False,
    check_dtype: bool = True,
) -> str | None:
    """Why ``received`` does not fit ``expected`` (same keys, shapes, dtypes), or None.

    Works on anything with ``shape`` and ``dtype`` (torch tensors, numpy arrays, Flower
    Arrays), so a reply on the server, the weights a site is sent and a checkpoint on
    disk are checked by the same rule. With ``ordered``, the keys must also come in the
    same order (Flower pairs arrays by position in some places).
    """
    keys, wanted = list(received), list(expected)
    if set(keys) != set(wanted):
        unexpected = sorted(set(keys) - set(wanted))
        missing = sorted(set(wanted) - set(keys))
        return f"keys differ: unexpected {unexpected[:5]}, missing {missing[:5]}"
    if ordered and keys != wanted:
        return "keys differ in order"
    for key in wanted:
        got, want = received[key], expected[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"'{key}' has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if check_dtype and dtype_name(got) != dtype_name(want):
            return f"'{key}' has dtype {dtype_name(got)}, expected {dtype_name(want)}"
    return None
