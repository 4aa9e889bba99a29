"""Reduced precision admitted by the ensemble's answers on a calibration set.

`calibration` loads the spec's calibration inputs (and labels); `admission` decides, from
per-member logits of each precision, which mixes of precisions keep the ensemble's top-1
answers within the spec's tolerance (pure numpy); `choice` plans each admitted mix and
keeps the fastest (pure, on profiles). The profiler computes the logits
(`enserve.profiler.accuracy`).
"""

from enserve.precision.admission import Tolerance, assess, ensemble_top1
from enserve.precision.calibration import Calibration, load_calibration

__all__ = ["Calibration", "Tolerance", "assess", "ensemble_top1", "load_calibration"]
