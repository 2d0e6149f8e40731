"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RlxError(Exception):
    """Base class: bad input or environment, explained in the message."""


class ConfigError(RlxError):
    """A config file, key or value is wrong."""


class PluginError(RlxError):
    """A plugin is invalid (unknown hook, clashing component name, bad registration)."""


class ComponentError(RlxError):
    """A component cannot be selected or built (unknown name, missing engine, broken plugin)."""


class GenerationRequestError(RlxError, ValueError):
    """A generation request is malformed (bad sampling settings, an empty prompt, a duplicate request id)."""


class WeightPushIncompleteError(RlxError):
    """A generator refuses to serve: its last weight push did not complete, so it may hold a mix of old and new
    weights. A later push that completes clears it."""


class WeightPushTimeoutError(RlxError):
    """A weight push did not finish within `cluster.timeout_s` (the message says which side was stuck)."""


class RolloutProducerError(RlxError):
    """The asynchronous rollout producer failed or did not deliver in time (names what it was doing)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def a_or_an(word: str) -> str:
    """`word` with its indefinite article: "an environment", "a generator", "an int"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
