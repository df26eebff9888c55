"""Exceptions raised by guide backends.

Every backend raises a subclass of :class:`GuideError`, so callers (the RL loop, the Ray actor) can
tell a broken guide apart from a bug in their own code.
"""

from __future__ import annotations

__all__ = [
    "GuideError",
    "GuideUnavailable",
    "GuideOutputError",
    "GuideRequestError",
    "GuideScoringUnsupported",
]


class GuideError(RuntimeError):
    """Base class of every error raised by a guide."""


class GuideUnavailable(GuideError):
    """The guide cannot be reached (server down, timeouts) after all retries."""


class GuideOutputError(GuideError):
    """The guide answered, but the answer is malformed (bad JSON, missing fields, wrong counts)."""


class GuideRequestError(GuideError):
    """The guide rejected the request (HTTP 4xx): retrying the same request cannot help."""


class GuideScoringUnsupported(GuideError, NotImplementedError):
    """The guide has no model to score text with (e.g. the dataset guide without a constant)."""
