"""How the Ray backend splits a batch over a member's replicas: rows in proportion to the
replicas' shares (no Ray needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from enserve.runtime.ray.engine import split_rows


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 2112])
def test_spans_cover_the_rows_in_order(rows: int) -> None:
    rng = np.random.default_rng(rows)
    for n in (1, 2, 3, 33):
        weights = list(rng.choice([25.0, 50.0, 100.0, 1.0], size=n))
        spans = split_rows(rows, weights)
        assert len(spans) == n
        assert spans[0][0] == 0 and spans[-1][1] == rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        sizes = np.array([stop - start for start, stop in spans])
        assert (sizes >= 0).all()
        # each replica within one row of its proportional part
        assert np.abs(sizes - rows * np.array(weights) / sum(weights)).max() < 1.0


def test_half_share_gets_half_the_rows() -> None:
    spans = split_rows(2112, [50.0] * 31 + [25.0] * 2)
    sizes = [b - a for a, b in spans]
    assert sizes[:31] == [66] * 31 and sizes[31:] == [33, 33]


def test_zero_weights_split_evenly() -> None:
    assert split_rows(6, [0.0, 0.0, 0.0]) == [(0, 2), (2, 4), (4, 6)]
    assert split_rows(0, [1.0]) == []
