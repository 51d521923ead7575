"""The route tree: which receivers get an alert, and how its notifications are grouped."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.monitor.matchers import Matcher, match_all, parse_matcher
from services.monitor.notifiers.config import RouteSpec

ALL_LABELS = "..."
_DEFAULTS = {"group_wait": 30.0, "cooldown": 300.0, "repeat_interval": 4 * 3600.0}


@dataclass(frozen=True)
class Route:
    id: str
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...] | None  # None: every label
    group_wait: float
    cooldown: float  # least time between two notifications of one group
    repeat_interval: float  # resend an unchanged, unacknowledged group after this long
    continue_: bool
    children: tuple[Route, ...]


def build_route(spec: RouteSpec, parent: Route | None = None, route_id: str = "0") -> Route:
    """Resolve a spec, inheriting what it leaves out from its parent."""

    def pick(name: str) -> float:
        value = getattr(spec, name)
        if value is not None:
            return float(value)
        return float(getattr(parent, name)) if parent else _DEFAULTS[name]

    if spec.group_by is not None:
        group_by = None if ALL_LABELS in spec.group_by else tuple(spec.group_by)
    else:
        group_by = parent.group_by if parent else ("alertname",)
    receiver = spec.receiver or (parent.receiver if parent else "")
    route = Route(
        id=route_id,
        receiver=receiver,
        matchers=tuple(parse_matcher(m) for m in spec.matchers),
        group_by=group_by,
        group_wait=pick("group_wait"),
        cooldown=pick("cooldown"),
        repeat_interval=pick("repeat_interval"),
        continue_=spec.continue_,
        children=(),
    )
    children = tuple(
        build_route(child, route, f"{route_id}.{i}") for i, child in enumerate(spec.routes)
    )
    return replace(route, children=children)


def match_routes(route: Route, labels: dict[str, str]) -> list[Route]:
    """The deepest matching routes: first matching child (and on, where it says continue)."""
    if not match_all(route.matchers, labels):
        return []
    found: list[Route] = []
    for child in route.children:
        matched = match_routes(child, labels)
        if matched:
            found.extend(matched)
            if not child.continue_:
                break
    return found or [route]


def group_of(route: Route, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The group key (route plus grouping label values) and the group's labels."""
    if route.group_by is None:
        group_labels = dict(labels)
    else:
        group_labels = {k: labels[k] for k in route.group_by if k in labels}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
    return f"{route.id}:{{{inner}}}", group_labels
