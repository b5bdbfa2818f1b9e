"""Why a site does not take part as asked."""

from __future__ import annotations


class SiteError(RuntimeError):
    """A site cannot take part as asked; the message names the site."""


class PrivacyBudgetSpent(SiteError):
    """Training this round would take the site past its target epsilon: it does not train."""
