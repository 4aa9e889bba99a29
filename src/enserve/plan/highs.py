"""A silent HiGHS instance.

HiGHS prints its banner ("Running HiGHS ...") from C++ when an instance is constructed,
before any option can turn logging off, straight to the process's stdout: that would
break `enserve ... --json | jq`. The constructor runs with the native stdout pointed at
/dev/null; afterwards `output_flag` and `log_to_console` keep the solver quiet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

import highspy

_LIBC = ctypes.CDLL(None)


@contextlib.contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """File descriptor 1 goes to /dev/null for the block (C and Python writes alike)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                _LIBC.fflush(None)  # C stdio buffers: out before fd 1 is given back
        sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def quiet_highs() -> highspy.Highs:
    """`highspy.Highs()` that prints nothing, now or when it solves."""
    with native_stdout_silenced():
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("log_to_console", False)
    return highs
