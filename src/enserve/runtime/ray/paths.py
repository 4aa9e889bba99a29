"""What `RayEngine`'s two side paths share: the compiled graph (`graph.CompiledPath`) and
the same-node fast lanes (`lane.Lanes`) hand answers back the way a plain Ray call's comes.

Each path takes the engine's two callbacks: `Answer`, with what the engine sent along
with a chunk and a done `Future` holding the actor's answer (or the member's error); and
`Broken`, with everything the path still had outstanding once it failed, and why. So
every answer, whichever way its chunk went, reaches the engine through one method.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

Answer = Callable[[Any, Future[Any]], None]  # (what was sent, answer)
Broken = Callable[[list[Any], str], None]  # (what was sent, outstanding; why)
