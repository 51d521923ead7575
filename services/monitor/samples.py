"""A sample is one value of one labelled series at collection time."""

from __future__ import annotations

from dataclasses import dataclass, field

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    help: str = ""


def label_key(labels: dict[str, str]) -> LabelKey:
    """A hashable, order-free form of a label set."""
    return tuple(sorted(labels.items()))
