"""Why a site did not do what it was asked: the only words an error reply carries.

A site that cannot train, evaluate or take a protocol step replies with an error whose
reason is one of these classes, nothing else: an exception's text would carry what the
site must keep (a data error names files, CSV rows and labels; a diverged loss under DP its
per-component values; a configuration error the site's paths). The details go to the
site's own log (:mod:`client.refusals`). The server records the class where it records a
rejected reply (``rejected`` in report.json, the coordinator's log, the tracker).
docs/deployment-security.md lists them for the coordinator's operator.
"""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    """The reason classes of a site's error reply (the value is what travels)."""

    # a sample or table of the site cannot be read or has a bad label
    DATA_ERROR = "data error"
    # the round would take the site past its target epsilon
    PRIVACY_BUDGET_EXHAUSTED = "privacy budget exhausted"
    # a task's loss became NaN or infinite
    TRAINING_DIVERGED = "training diverged"
    # a secure-aggregation step broke the protocol, or the server's parameters were refused
    SECURE_AGGREGATION_REFUSED = "secure aggregation refused"
    # the site sends no plain update (require_secure_aggregation in its site file)
    SECURE_AGGREGATION_REQUIRED = "secure aggregation required"
    # encoded weights that cannot be decoded (federation.codecs: a missing entry, a wrong
    # dtype or shape, a scale that is not a finite number >= 0); the server rejects a
    # site's reply for it too, with the key at fault
    MALFORMED_PAYLOAD = "malformed payload"
    # the site file, the run's settings or the weights sent do not fit this site
    CONFIGURATION_ERROR = "configuration error"
    # anything else (a bug, a full disk ...)
    INTERNAL_ERROR = "internal error"
