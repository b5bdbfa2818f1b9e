"""Which replies of a round count, and the round's record of what each site did.

Two passes: each reply on its own (:func:`strategies.validation.reply_problem`), then, in
training, the surviving updates against each other and the global weights: change norms
per group above ``update-norm-bound`` or ``update-norm-ratio`` x the round's median are
rejected (:mod:`strategies.defences`). Only the replies that pass both are recorded as
the site's metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from logging import WARNING

from flwr.app import Array, Message
from flwr.common.logger import log

from strategies.defences import UpdatePolicy, change_norms, norm_rejections
from strategies.records import RoundRecord, arrays_nbytes
from strategies.validation import reply_problem


def accept_replies(
    replies: Sequence[Message],
    *,
    record: RoundRecord,
    site_name: Callable[[int], str],
    replying_node: Callable[[Message], int],
    sent_to: Mapping[int, Sequence[str]],
    reference: Mapping[str, Array],
    weight_key: str | None,
    train: bool,
    policy: UpdatePolicy | None = None,
    decode: Callable[[Message, Sequence[str]], str | None] | None = None,
) -> list[Message]:
    """The usable replies; every rejection (and, in training, every silence) goes to ``record``.

    ``sent_to`` maps each node asked to train to the keys it was sent: a training reply
    must carry exactly those. ``weight_key`` is the metric a reply must carry as a
    positive number (None: none needed, the server weighs replies equally). Training
    replies are then checked against ``policy``'s norm bounds. Accepted replies' metrics
    (and sizes) are recorded per site. ``replying_node`` tells which node a reply answers
    for (see ``GroupedStrategy.replying_node``). ``decode`` (compressed updates,
    :mod:`strategies.compression`) turns a training reply's encoded arrays into float32
    weights in place before any check, or says why it cannot; the bytes recorded are those
    that travelled.
    """
    phase = "training" if train else "evaluation"

    def reject(site: str, problem: str) -> None:
        record.rejected.append((site, f"{phase}: {problem}"))
        log(
            WARNING,
            "round %s: rejected %s reply of site %s: %s",
            record.round,
            phase,
            site,
            problem,
        )

    candidates: list[tuple[str, Message]] = []
    travelled: dict[str, int] = {}  # site -> bytes of its reply as it arrived (encoded)
    for reply in replies:
        node = replying_node(reply)
        site = site_name(node)
        if train and not reply.has_error() and len(reply.content.array_records) == 1:
            travelled[site] = arrays_nbytes(next(iter(reply.content.array_records.values())))
        if decode is not None and train and node in sent_to:
            if problem := decode(reply, sent_to[node]):
                reject(site, problem)
                continue
        problem = reply_problem(
            reply,
            expected_keys=sent_to.get(node, []),
            reference=reference,
            weight_key=weight_key,
            needs_arrays=train,
        )
        if problem is None and train and node not in sent_to:
            problem = "this site was not asked to train in this round"
        if problem:
            reject(site, problem)
            continue
        candidates.append((site, reply))

    if train and policy is not None:
        norms = {
            site: change_norms(next(iter(reply.content.array_records.values())), reference)
            for site, reply in candidates
        }
        record.update_norms.update(norms)
        if policy.norm_bound > 0 or policy.norm_ratio > 0:
            problems = norm_rejections(norms, bound=policy.norm_bound, ratio=policy.norm_ratio)
            for site, problem in problems.items():
                reject(site, problem)
            candidates = [(s, r) for s, r in candidates if s not in problems]

    accepted = []
    for site, reply in candidates:
        accepted.append(reply)
        metrics = {
            k: float(v)
            for k, v in next(iter(reply.content.metric_records.values())).items()
            if isinstance(v, int | float)
        }
        if train:
            arrays = next(iter(reply.content.array_records.values()))
            record.bytes_received[site] = travelled.get(site, arrays_nbytes(arrays))
            record.train_metrics[site] = metrics
        else:
            record.eval_metrics[site] = metrics
    if train:
        answered = {replying_node(r) for r in replies}
        for node in sorted(set(sent_to) - answered):
            record.rejected.append((site_name(node), "training: no reply before the round timeout"))
            log(WARNING, "round %s: site %s did not answer in time", record.round, site_name(node))
    return accepted
