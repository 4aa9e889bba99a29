"""Imported last by every fork server (`launch.PRELOAD`): values each worker would
otherwise compute after its fork (library versions read from package metadata, 10-20 ms
a worker; the key of ONNX Runtime's optimized copies) are computed once, here, and
inherited by every fork."""

from enserve.members.onnx_shared import warm_keys
from enserve.variants.fingerprint import library_versions

library_versions()
warm_keys()
