"""Reading Prometheus text back into numbers: the dashboard shows exactly what `/metrics` says.

`parse` reads the exposition format the server writes (one sample per line, `# HELP` and
`# TYPE` comments) into `Samples`, an index from sample name to labelled values; it keeps
names as written (prometheus-client's own parser renames counters and is ~10x slower).
`quantile` interpolates inside histogram buckets as PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by name: hashable, and equal for equal label sets."""

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    name: str
    kind: str = "untyped"
    help: str = ""


@dataclass
class Samples:
    """Every sample of one scrape: `values[sample_name][labels] = value`, plus the families."""

    values: dict[str, dict[Labels, float]] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)
    _as_dicts: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict, repr=False)

    def series(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample named `name` whose labels include `match`."""
        every = self._as_dicts.get(name)
        if every is None:
            every = self._as_dicts[name] = [(dict(k), v) for k, v in self.values.get(name, {}).items()]
        items = match.items()
        return [(labels, value) for labels, value in every
                if all(labels.get(k) == v for k, v in items)]

    def total(self, name: str, **match: str) -> float:
        """Sum of the matching samples (0.0 when there are none)."""
        return sum(value for _, value in self.series(name, **match))

    def has(self, name: str) -> bool:
        return bool(self.values.get(name))

    def buckets(self, histogram: str, **match: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) of a histogram, summed over series matching `match`."""
        merged: dict[float, float] = {}
        for labels, value in self.series(f"{histogram}_bucket", **match):
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            merged[bound] = merged.get(bound, 0.0) + value
        return sorted(merged.items())


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return re.sub(r'\\\\|\\"|\\n', lambda m: _UNESCAPE[m.group(0)], text)


def _labels(text: str) -> Labels:
    pairs = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"bad labels: {{{text}}}")
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return tuple(sorted(pairs))


def parse(text: str) -> Samples:
    """Parse Prometheus text exposition (format 0.0.4); timestamps are ignored."""
    samples = Samples()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = samples.families.setdefault(parts[2], Family(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "TYPE":
                    family.kind = rest.strip()
                else:
                    family.help = rest
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rindex("}")
            name, labels, rest = line[:brace], _labels(line[brace + 1 : close]), line[close + 1 :]
        else:
            name, _, rest = line.partition(" ")
            labels = ()
        value = rest.split()[0]
        samples.values.setdefault(name, {})[labels] = float(value)
    return samples


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile (0..1) from cumulative (upper bound, count) buckets, interpolated
    linearly inside the bucket as PromQL's `histogram_quantile`; None without observations.
    A quantile in the +Inf bucket answers the largest finite bound."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def delta_buckets(now: Iterable[tuple[float, float]],
                  before: Mapping[float, float]) -> list[tuple[float, float]]:
    """Bucket counts observed since `before` (a counter that went down restarted: keep `now`)."""
    out = []
    for bound, count in now:
        previous = before.get(bound, 0.0)
        out.append((bound, count - previous if count >= previous else count))
    return out
