"""The Open Inference Protocol server: one DataPlane behind thin HTTP and gRPC adapters.

Start one with `enserve serve REPOSITORY`, or in Python with
`EnserveServer(ServerConfig(repository=...))` from `enserve.server.app`.
"""

from enserve.server.limits import Limits

__all__ = ["Limits"]
