"""Inhibition: a firing source alert mutes target alerts (e.g. Redis down mutes
alerts about things that need Redis), optionally only where given labels agree."""

from __future__ import annotations

from dataclasses import dataclass

from services.monitor.lifecycle import NOTIFIABLE, Alert
from services.monitor.matchers import Matcher, match_all


@dataclass(frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    def applies(self, source: Alert, target: Alert) -> bool:
        return (
            source.fingerprint != target.fingerprint
            and match_all(self.target, target.labels)
            # An alert that is itself a source is never muted by this rule.
            and not match_all(self.source, target.labels)
            and all(source.labels.get(k, "") == target.labels.get(k, "") for k in self.equal)
        )


def inhibitors(rules: list[InhibitRule], alerts: list[Alert]) -> dict[str, list[str]]:
    """Fingerprint of each muted alert -> names of the alerts muting it."""
    out: dict[str, list[str]] = {}
    for rule in rules:
        sources = [a for a in alerts if a.state in NOTIFIABLE and match_all(rule.source, a.labels)]
        if not sources:
            continue
        for target in alerts:
            names = [s.rule for s in sources if rule.applies(s, target)]
            if names:
                out.setdefault(target.fingerprint, []).extend(names)
    return out
