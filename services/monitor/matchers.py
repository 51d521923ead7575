"""Label matchers (``name="v"``, ``!=``, ``=~``, ``!~``) for selectors, silences, routes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MATCHER = re.compile(
    r"""^\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*
        (?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^"'\s]*)\s*$""",
    re.X,
)


class MatchOp(StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


class MatcherError(ValueError):
    """A matcher that cannot be parsed or whose regular expression is invalid."""


@dataclass(frozen=True)
class Matcher:
    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    # Label values repeat across series and cycles; remembering answers keeps regex
    # matchers off the evaluation hot path.
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def make(cls, name: str, op: str, value: str) -> Matcher:
        if not LABEL_NAME.match(name):
            raise MatcherError(f"invalid label name {name!r}")
        try:
            kind = MatchOp(op)
        except ValueError:
            raise MatcherError(f"unknown matcher operator {op!r}") from None
        regex = None
        if kind in (MatchOp.RE, MatchOp.NRE):
            try:
                regex = re.compile(f"(?:{value})")  # anchored by fullmatch, as in PromQL
            except re.error as exc:
                raise MatcherError(f"invalid regular expression {value!r}: {exc}") from None
        return cls(name, kind, value, regex)

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op is MatchOp.EQ:
            return actual == self.value
        if self.op is MatchOp.NE:
            return actual != self.value
        answer = self._seen.get(actual)
        if answer is None:
            assert self._regex is not None
            found = self._regex.fullmatch(actual) is not None
            answer = found if self.op is MatchOp.RE else not found
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[actual] = answer
        return answer

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op.value, "value": self.value}

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op.value}"{escaped}"'


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_matcher(text: str) -> Matcher:
    """``severity=~"critical|emergency"`` -> Matcher."""
    found = _MATCHER.match(text)
    if found is None:
        raise MatcherError(f'cannot parse matcher {text!r}; expected name="value"')
    return Matcher.make(found["name"], found["op"], unquote(found["value"]))


def matcher_from_json(raw: Any) -> Matcher:
    """A matcher given as ``{"name", "op", "value"}`` or as a string."""
    if isinstance(raw, str):
        return parse_matcher(raw)
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise MatcherError("a matcher is a string or an object with name, op and value")
    value = raw.get("value", "")
    if not isinstance(value, str):
        raise MatcherError("a matcher's value must be a string")
    return Matcher.make(raw["name"], str(raw.get("op", "=")), value)


def match_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
