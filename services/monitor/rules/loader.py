"""Load rule files (YAML) into validated rules, with errors that name file and rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.monitor.matchers import LABEL_NAME
from services.monitor.rules import templating
from services.monitor.rules.durations import Duration
from services.monitor.rules.model import NoDataPolicy, Rule, Severity
from services.monitor.rules.parser import parse_expr

DEFAULT_RULES = Path(__file__).with_name("default.yaml")
_RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_LABELS = frozenset({"alertname", "alertstate", "severity"})


class RuleLoadError(ValueError):
    """A rule file that cannot be used; the message says where and why."""


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    expr: str
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    severity: Severity
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    no_data: NoDataPolicy = NoDataPolicy.NODATA

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RULE_NAME.match(value):
            raise ValueError("a rule name is letters, digits and underscores")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not LABEL_NAME.match(name):
                raise ValueError(f"invalid label name {name!r}")
            if name in RESERVED_LABELS:
                raise ValueError(f"label {name!r} is set by the monitor")
        return value

    def build(self, source: str) -> Rule:
        expr = parse_expr(self.expr)
        for key, template in self.annotations.items():
            try:
                templating.check(template)
            except templating.TemplateError as exc:
                raise ValueError(f"annotation {key}: {exc}") from None
        return Rule(
            name=self.name,
            expr=expr,
            expr_text=self.expr,
            severity=self.severity,
            for_seconds=self.for_,
            keep_firing_for=self.keep_firing_for,
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            no_data=self.no_data,
            source=source,
        )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuleLoadError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RuleLoadError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RuleLoadError(f"{path}: the top level must be a mapping")
    return data


def _pydantic_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def rules_from_data(data: Any, source: str) -> list[Rule]:
    """Validate the ``rules:`` list of one document."""
    raw = data.get("rules", []) if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise RuleLoadError(f"{source}: 'rules' must be a list")
    out: list[Rule] = []
    for i, item in enumerate(raw):
        label = item.get("name", f"#{i + 1}") if isinstance(item, dict) else f"#{i + 1}"
        try:
            out.append(RuleSpec.model_validate(item).build(source))
        except ValidationError as exc:
            raise RuleLoadError(f"{source}: rule {label}: {_pydantic_message(exc)}") from None
        except ValueError as exc:
            raise RuleLoadError(f"{source}: rule {label}: {exc}") from None
    return out


def load_file(path: Path) -> list[Rule]:
    return rules_from_data(read_yaml(path), str(path))


def _expand(paths: str) -> list[Path]:
    found: list[Path] = []
    for part in (p.strip() for p in paths.split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def check_unique(rules: list[Rule]) -> list[Rule]:
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.name in seen:
            raise RuleLoadError(
                f"rule {rule.name} is defined twice ({seen[rule.name]} and {rule.source})"
            )
        seen[rule.name] = rule.source
    return rules


def load_rules(extra_paths: str = "", *, include_default: bool = True) -> list[Rule]:
    """The shipped rules plus every rule file named in ``extra_paths`` (files or dirs)."""
    files = ([DEFAULT_RULES] if include_default else []) + _expand(extra_paths)
    rules: list[Rule] = []
    for path in files:
        rules.extend(load_file(path))
    return check_unique(rules)
