"""A test hook: slow chosen members down on purpose (deadline answers, stragglers).

`ENSERVE_SLOW_MEMBERS="wide=0.05,deep=0.2"` makes member `wide` sleep 50 ms and `deep`
200 ms before every batch it computes, in the reference backend and in engine workers.
Read by the process that starts them (the server, or the engine's caller).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from enserve.errors import EnserveError

SLOW_ENV = "ENSERVE_SLOW_MEMBERS"


def slow_members(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """Member -> seconds of extra delay per batch, from `ENSERVE_SLOW_MEMBERS`."""
    text = (os.environ if environ is None else environ).get(SLOW_ENV, "").strip()
    delays: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or not name or not seconds >= 0:
            raise EnserveError(f"{SLOW_ENV}: '{item}' is not MEMBER=SECONDS (e.g. wide=0.05)")
        delays[name.strip()] = seconds
    return delays


class Slowed:
    """A member that sleeps `delay_s` before computing each batch."""

    def __init__(self, member: Any, delay_s: float) -> None:
        self._member = member
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.asarray(self._member(batch))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._member, name)
