"""`import enserve` offers the public names, loads them lazily, and stays light."""

from __future__ import annotations

import subprocess
import sys

import enserve


def test_every_public_name_resolves() -> None:
    for name in enserve.__all__:
        assert getattr(enserve, name) is not None, name
    assert set(enserve.__all__) == {"__version__", *enserve._PUBLIC}


def test_import_enserve_loads_no_torch_and_plan_is_callable_either_way() -> None:
    code = ("import sys, enserve; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'numpy' not in sys.modules, 'numpy'; "
            "import enserve.plan.cost; "  # the subpackage takes its name in `enserve` first
            "from enserve.plan.scenarios import random_profile; "
            "p = enserve.plan(random_profile(3)); assert isinstance(p, enserve.Plan); "
            "assert enserve.plan.plan is enserve.plan.solve.plan")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_readme_example_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    spec = enserve.load_spec("examples/digits")
    batch = np.load("examples/digits/samples.npy")[:4]
    result = enserve.ReferenceExecutor(spec).infer(batch)
    assert result.probabilities.shape == (4, 10)
    assert isinstance(spec, enserve.EnsembleSpec)
