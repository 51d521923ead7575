"""Parse rule expressions: a small, PromQL-shaped language with one comparison.

    [sum|avg|max|min|count [by|without (label, ...)]] (
        metric{label="v", ...}  |  fn(metric{...}[window])
    ) (> | >= | < | <= | == | !=) number

Written by hand because a full PromQL engine is far more than rules need, and a
grammar this small stays readable and fast to evaluate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from services.monitor.matchers import Matcher, MatcherError, unquote
from services.monitor.rules.durations import parse_duration
from services.monitor.rules.model import AGGREGATIONS, COMPARISONS, RANGE_FUNCTIONS, Expr, Selector

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<duration>(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+)(?![a-zA-Z0-9_])
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![a-zA-Z_])
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<op>=~|!~|!=|==|>=|<=|[=<>{}()\[\],])
    )""",
    re.X,
)


class ExprError(ValueError):
    """An expression that does not parse, with the position of the problem."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        found = _TOKEN.match(text, pos)
        if found is None or found.lastgroup is None:
            raise ExprError(f"unexpected character at {pos}: {text[pos : pos + 10]!r}")
        tokens.append(
            _Tok(found.lastgroup, found.group(found.lastgroup), found.start(found.lastgroup))
        )
        pos = found.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise ExprError(f"unexpected end of expression; expected {text or kind}")
        if (kind and tok.kind != kind) or (text and tok.text != text):
            raise ExprError(f"expected {text or kind} at {tok.pos}, found {tok.text!r}")
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    def expression(self) -> Expr:
        expr = self.value()
        op = self.take("op")
        if op.text not in COMPARISONS:
            raise ExprError(f"expected a comparison at {op.pos}, found {op.text!r}")
        number = self.take("number")
        if self.peek() is not None:
            tok = self.tokens[self.i]
            raise ExprError(f"unexpected {tok.text!r} at {tok.pos} after the threshold")
        return replace(expr, op=op.text, threshold=float(number.text))

    def value(self) -> Expr:
        tok = self.peek()
        nxt = self.peek(1)
        if tok and tok.kind == "ident" and tok.text in AGGREGATIONS and nxt:  # noqa: SIM102
            if nxt.text in ("(", "by", "without"):  # else it is a metric named like one
                return self.aggregation()
        return self.inner()

    def aggregation(self) -> Expr:
        agg = self.take("ident").text
        grouping, without = self.grouping()
        self.take("op", "(")
        inner = self.inner()
        self.take("op", ")")
        if not grouping and not without:
            grouping, without = self.grouping()
        return replace(inner, agg=agg, grouping=grouping, without=without)

    def grouping(self) -> tuple[tuple[str, ...], bool]:
        tok = self.peek()
        if tok is None or tok.text not in ("by", "without"):
            return (), False
        self.i += 1
        self.take("op", "(")
        labels: list[str] = []
        while not self.at(")"):
            labels.append(self.take("ident").text)
            if not self.at(")"):
                self.take("op", ",")
        self.take("op", ")")
        return tuple(labels), tok.text == "without"

    def inner(self) -> Expr:
        tok = self.peek()
        nxt = self.peek(1)
        if tok and tok.kind == "ident" and nxt and nxt.text == "(":
            if tok.text not in RANGE_FUNCTIONS:
                raise ExprError(f"unknown function {tok.text!r} at {tok.pos}")
            self.i += 2
            selector = self.selector()
            self.take("op", "[")
            window = parse_duration(self.take("duration").text)
            if window <= 0:
                raise ExprError("a window must be longer than zero")
            self.take("op", "]")
            self.take("op", ")")
            return Expr(selector, "", 0.0, func=tok.text, window=window)
        return Expr(self.selector(), "", 0.0)

    def selector(self) -> Selector:
        metric = self.take("ident").text
        matchers: list[Matcher] = []
        if self.at("{"):
            self.i += 1
            while not self.at("}"):
                name = self.take("ident").text
                op = self.take("op")
                value = self.take("string")
                try:
                    matchers.append(Matcher.make(name, op.text, unquote(value.text)))
                except MatcherError as exc:
                    raise ExprError(f"{exc} at {op.pos}") from None
                if not self.at("}"):
                    self.take("op", ",")
            self.take("op", "}")
        return Selector(metric, tuple(matchers))


def parse_expr(text: str) -> Expr:
    """Parse a rule expression; raise ExprError with a position on failure."""
    if not text.strip():
        raise ExprError("the expression is empty")
    try:
        return _Parser(text).expression()
    except ValueError as exc:
        if isinstance(exc, ExprError):
            raise
        raise ExprError(str(exc)) from None
