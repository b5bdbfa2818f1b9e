"""What leaves a site when it cannot do what it was asked: a reason class, nothing more.

Flower turns an exception raised from a ClientApp handler into an error reply that carries
``str(exception)``, which the server stores (``rejected`` in report.json, its log, the
tracker). A site's exception text is the site's business: a data error names files, CSV
rows and labels; a diverged loss its per-component values; a configuration error the site's
paths. So every handler runs inside :func:`reason_only` (a Flower mod the ClientApp puts
around all of them): an exception becomes an error reply whose reason is its class
(:class:`federation.reasons.Refusal`), and the exception itself, with its traceback, goes to
the site's own log (loggers under ``client``, which the ClientApp hands to Flower's log:
the SuperNode's ``supernode.log`` in the site's state folder). An error reply a handler
builds itself with words of its own is cut down to its class the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from client.errors import PrivacyBudgetSpent, SiteError
from client.secagg import SecAggError
from federation import wire
from federation.codecs import PayloadError
from federation.reasons import Refusal
from umedpt.checkpoint import CheckpointError
from umedpt.data.cache import CacheError
from umedpt.errors import ConfigError, DataError, RegistryError
from umedpt.privacy import BudgetExhaustedError
from umedpt.privacy.errors import PrivacyError

log = logging.getLogger(__name__)

REFUSALS = frozenset(r.value for r in Refusal)  # the only reasons an error reply may carry

# Most specific first: PrivacyBudgetSpent is a SiteError, BudgetExhaustedError a PrivacyError.
_CLASSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Refusal], ...] = (
    ((PrivacyBudgetSpent, BudgetExhaustedError), Refusal.PRIVACY_BUDGET_EXHAUSTED),
    ((DataError, CacheError), Refusal.DATA_ERROR),
    (FloatingPointError, Refusal.TRAINING_DIVERGED),
    (SecAggError, Refusal.SECURE_AGGREGATION_REFUSED),
    (PayloadError, Refusal.MALFORMED_PAYLOAD),
    ((ConfigError, RegistryError, SiteError, PrivacyError), Refusal.CONFIGURATION_ERROR),
    (CheckpointError, Refusal.INTERNAL_ERROR),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (or while handling), in that order."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def refusal_of(exc: BaseException) -> Refusal:
    """The reason class of ``exc`` (or of what it was raised from); internal error if none."""
    for raised in _chain(exc):
        for kinds, refusal in _CLASSES:
            if isinstance(raised, kinds):
                return refusal
    return Refusal.INTERNAL_ERROR


def refusal_of_text(reason: str) -> Refusal:
    """The class a free-text reason starts with ("secure aggregation refused: ..."), else
    internal error."""
    return next((r for r in Refusal if reason.startswith(r.value)), Refusal.INTERNAL_ERROR)


def refusal_reply(message: Message, refusal: Refusal | str) -> Message:
    """An error reply to ``message`` that carries nothing but a reason class: ``refusal``,
    or, for free text, the class it starts with (:func:`refusal_of_text`; the text is
    logged here). Free text never leaves."""
    reason = refusal if isinstance(refusal, Refusal) else refusal_of_text(str(refusal))
    if reason.value != refusal:
        log.warning(
            "%s refused: %s; only the reason class '%s' is sent", _what(message), refusal, reason
        )
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason.value), reply_to=message
    )


def reason_only(
    message: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """A Flower mod around every handler: an exception is logged here, in full, and
    answered with its reason class only."""
    try:
        reply = call_next(message, context)
    except Exception as exc:
        refusal = refusal_of(exc)
        log.error(
            "%s not done: %s: %s; only the reason class '%s' is sent",
            _what(message),
            type(exc).__name__,
            exc,
            refusal,
            exc_info=exc,
        )
        return refusal_reply(message, refusal)
    if reply.has_error() and reply.error.reason not in REFUSALS:
        # A handler's own error reply with words of its own: those stay here too.
        return refusal_reply(message, str(reply.error.reason))
    return reply


def _what(message: Message) -> str:
    """'train (round 3)' or 'query': what the server asked, for the site's log."""
    kind = message.metadata.message_type
    try:
        server_round = message.content[wire.CONFIG].get(wire.SERVER_ROUND)
    except Exception:  # no config record (a query, a protocol stage) or no content
        server_round = None
    return f"{kind} (round {server_round})" if server_round is not None else kind
