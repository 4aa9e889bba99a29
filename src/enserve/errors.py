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


class UnavailableError(InferenceError):
    """Not the client's fault and maybe gone soon: the model is loading, unloading, stopping
    or has no running worker right now (HTTP 503 with `Retry-After`, gRPC UNAVAILABLE)."""


class OverloadedError(UnavailableError):
    """The engine's queue is full; the request was rejected, not queued."""


class MemberFailedError(InferenceError):
    """A member (or the worker running it) failed while answering valid input: the server's
    fault (HTTP 500, gRPC INTERNAL), not the client's."""


class DeadlineError(InferenceError):
    """The request's deadline passed before it was answered (HTTP 504, gRPC DEADLINE_EXCEEDED)."""
