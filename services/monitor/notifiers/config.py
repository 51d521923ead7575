"""The notification config (YAML): receivers, the route tree, inhibition rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from services.monitor.matchers import MatcherError, parse_matcher
from services.monitor.rules.durations import Duration
from services.monitor.rules.loader import RuleLoadError, read_yaml

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReceiverBase(_Base):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    send_resolved: bool = True
    timeout: Duration = 10.0
    retry_attempts: int = Field(default=3, ge=1, le=10)
    retry_backoff: Duration = 1.0


class _Secret(_Base):
    secret: SecretStr | None = None
    secret_env: str | None = None

    def secret_value(self) -> str | None:
        """The inline secret, or the named environment variable's value."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if value is None:
                raise ValueError(f"environment variable {self.secret_env} is not set")
            return value
        return None


class WebhookReceiver(ReceiverBase, _Secret):
    kind: Literal["webhook"]
    url: str
    headers: dict[str, str] = {}


class AlertmanagerReceiver(ReceiverBase):
    kind: Literal["alertmanager"]
    url: str


class SlackReceiver(ReceiverBase):
    kind: Literal["slack"]
    url: str
    channel: str | None = None


class TelegramReceiver(ReceiverBase):
    kind: Literal["telegram"]
    account: str
    chat: str
    tenant: str = "default"
    # Param names of the telegram.send_message job, should they differ from these.
    params_map: dict[str, str] = {"account": "account_id", "chat": "peer", "text": "text"}


class EmailReceiver(ReceiverBase, _Secret):
    kind: Literal["email"]
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    username: str | None = None
    starttls: bool = False
    ssl: bool = False


class LogReceiver(ReceiverBase):
    kind: Literal["log"]


Receiver = Annotated[
    WebhookReceiver
    | AlertmanagerReceiver
    | SlackReceiver
    | TelegramReceiver
    | EmailReceiver
    | LogReceiver,
    Field(discriminator="kind"),
]


class RouteSpec(_Base):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    receiver: str | None = None
    matchers: list[str] = []
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    cooldown: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = Field(default=False, alias="continue")
    routes: list[RouteSpec] = []

    @model_validator(mode="after")
    def _matchers_parse(self) -> RouteSpec:
        for text in self.matchers:
            try:
                parse_matcher(text)
            except MatcherError as exc:
                raise ValueError(str(exc)) from None
        return self


class InhibitSpec(_Base):
    source_matchers: list[str] = Field(min_length=1)
    target_matchers: list[str] = Field(min_length=1)
    equal: list[str] = []


class NotifyConfig(_Base):
    external_url: str = ""
    receivers: list[Receiver] = []
    route: RouteSpec = RouteSpec(receiver="log")
    inhibit_rules: list[InhibitSpec] = []

    @model_validator(mode="after")
    def _receivers_exist(self) -> NotifyConfig:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receiver names must be unique")
        if not self.route.receiver:
            raise ValueError("the root route needs a receiver")
        stack = [self.route]
        while stack:
            route = stack.pop()
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(f"route names unknown receiver {route.receiver!r}")
            stack.extend(route.routes)
        for rule in self.inhibit_rules:
            for text in rule.source_matchers + rule.target_matchers:
                try:
                    parse_matcher(text)
                except MatcherError as exc:
                    raise ValueError(f"inhibit rule: {exc}") from None
        return self


def load_config(path: str = "") -> NotifyConfig:
    """The config at ``path``, or the shipped one (a log receiver and inhibitions)."""
    source = Path(path) if path else DEFAULT_CONFIG
    data = read_yaml(source)
    try:
        return NotifyConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RuleLoadError(f"{source}: {where}: {first['msg']}") from None
