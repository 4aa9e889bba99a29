"""Errors that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations


class EnserveError(Exception):
    """Base of every error enserve raises on purpose."""


class SpecError(EnserveError):
    """An ensemble spec (or a file it names) is invalid; the message names file and field."""


class ModelLoadError(EnserveError):
    """A member's model file could not be loaded safely."""


class PlanError(EnserveError):
    """No plan satisfies the profile, devices and constraints (e.g. the ensemble does not fit)."""


class ProfileError(EnserveError):
    """A profile file is malformed or lacks entries a plan needs."""


class InferenceError(EnserveError):
    """A request could not be answered (bad input, a failed member, overload, timeout)."""


class OverloadedError(InferenceError):
    """The engine's queue is full; the request was rejected, not queued."""
