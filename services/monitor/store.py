"""Recent samples of every series, indexed by metric name and label pairs.

Rules select series by name and label matchers many times per cycle, so equality
matchers are answered from posting sets instead of scanning every series.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from services.monitor.samples import LabelKey, Sample, label_key


class Series:
    """One labelled series: its recent points as parallel time and value lists, so a
    window is two bisects and two slices rather than a walk."""

    __slots__ = ("collector", "key", "labels", "last_seen", "name", "times", "values")

    def __init__(self, name: str, labels: dict[str, str], collector: str) -> None:
        self.name = name
        self.labels = labels
        self.key = label_key(labels)
        self.collector = collector
        self.times: list[float] = []
        self.values: list[float] = []
        self.last_seen = float("-inf")

    def latest(self) -> float:
        return self.values[-1]

    def window(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """Times and values with start < t <= end, oldest first."""
        lo = bisect_right(self.times, start)
        hi = bisect_right(self.times, end)
        return self.times[lo:hi], self.values[lo:hi]


class SeriesStore:
    """Keeps ``retention`` seconds of points per series; a series is current while its
    collector's latest batch contained it."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.by_name: dict[str, dict[LabelKey, Series]] = {}
        self.postings: dict[str, dict[tuple[str, str], set[LabelKey]]] = {}
        self.batch_at: dict[str, float] = {}
        self.origin: dict[str, str] = {}

    def ingest(self, collector: str, samples: Iterable[Sample], at: float) -> None:
        """Record one collector's batch; its series missing from the batch go stale."""
        self.batch_at[collector] = at
        for s in samples:
            series = self._series(s.name, s.labels, collector)
            if series.last_seen == at:  # the same series twice in one batch: keep the last
                series.values[-1] = s.value
                continue
            series.times.append(at)
            series.values.append(s.value)
            series.last_seen = at
            self.origin[s.name] = collector

    def mark_failed(self, collector: str, at: float) -> None:
        """A failed collection makes all of that collector's series stale."""
        self.batch_at[collector] = at

    def is_current(self, series: Series) -> bool:
        return series.last_seen == self.batch_at.get(series.collector)

    def _series(self, name: str, labels: dict[str, str], collector: str) -> Series:
        named = self.by_name.setdefault(name, {})
        key = label_key(labels)
        series = named.get(key)
        if series is None:
            series = Series(name, dict(labels), collector)
            named[key] = series
            postings = self.postings.setdefault(name, {})
            for pair in key:
                postings.setdefault(pair, set()).add(key)
        series.collector = collector
        return series

    def candidates(self, name: str, equal: Iterable[tuple[str, str]]) -> list[Series]:
        """Series of ``name`` carrying every (label, value) pair in ``equal``."""
        named = self.by_name.get(name)
        if not named:
            return []
        keys: set[LabelKey] | None = None
        postings = self.postings[name]
        for pair in equal:
            found = postings.get(pair)
            if not found:
                return []
            keys = set(found) if keys is None else keys & found
            if not keys:
                return []
        if keys is None:
            return list(named.values())
        return [named[k] for k in keys]

    def current(self) -> Iterable[Series]:
        for named in self.by_name.values():
            for series in named.values():
                if self.is_current(series):
                    yield series

    def prune(self, now: float) -> None:
        """Drop points older than the retention, and series with none left."""
        horizon = now - self.retention
        for name, named in list(self.by_name.items()):
            for key, series in list(named.items()):
                cut = bisect_left(series.times, horizon)
                if cut:
                    del series.times[:cut]
                    del series.values[:cut]
                if not series.times:
                    del named[key]
                    postings = self.postings[name]
                    for pair in key:
                        postings[pair].discard(key)
                        if not postings[pair]:
                            del postings[pair]
            if not named:
                del self.by_name[name]
                del self.postings[name]
