"""The notification config and routing; a monitor with a broken config refuses to start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.monitor.notifiers.build import build_notifiers
from services.monitor.notifiers.config import NotifyConfig, load_config
from services.monitor.notifiers.routing import build_route, group_of, match_routes
from services.monitor.rules.loader import RuleLoadError
from shared.queue import JobStore
from tests.helpers import Proc


def test_the_shipped_config_logs_and_inhibits() -> None:
    config = load_config()
    assert [r.kind for r in config.receivers] == ["log"]
    assert config.route.receiver == "log"
    assert config.inhibit_rules[0].source_matchers == ['alertname="RedisDown"']


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("route: {receiver: nobody}", "unknown receiver 'nobody'"),
        ("receivers: [{name: a, kind: log}, {name: a, kind: log}]\nroute: {receiver: a}", "unique"),
        ("receivers: [{name: a, kind: pager}]\nroute: {receiver: a}", "pager"),
        (
            "receivers: [{name: a, kind: log}]\nroute: {receiver: a, matchers: ['x~1']}",
            "cannot parse",
        ),
        ("receivers: [{name: a, kind: log}]\nroute: {receiver: a, group_wait: soon}", "duration"),
        (
            "receivers: [{name: a, kind: email, host: h, from: f, to: []}]\nroute: {receiver: a}",
            "to",
        ),
        ("receivers: [{name: a, kind: log}]\nroute: {routes: [{receiver: a}]}", "root route"),
    ],
)
def test_config_errors_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    with pytest.raises(RuleLoadError, match=message):
        load_config(str(path))


async def test_a_secret_from_a_missing_variable_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    config = NotifyConfig.model_validate(
        {
            "receivers": [
                {"name": "h", "kind": "webhook", "url": "http://x", "secret_env": "HOOK_SECRET"}
            ],
            "route": {"receiver": "h"},
        }
    )
    jobs = JobStore(Redis(), status_ttl=60, idempotency_ttl=60, shards=4)  # never used: no I/O
    async with httpx.AsyncClient() as http:
        with pytest.raises(RuleLoadError, match="HOOK_SECRET is not set"):
            build_notifiers(config, http, jobs)
        monkeypatch.setenv("HOOK_SECRET", "abc")
        assert set(build_notifiers(config, http, jobs)) == {"h"}
    await jobs.redis.aclose()


def test_routes_inherit_match_first_and_continue() -> None:
    spec: dict[str, Any] = {
        "receivers": [{"name": n, "kind": "log"} for n in ("root", "pager", "chat", "db")],
        "route": {
            "receiver": "root", "group_by": ["alertname"], "repeat_interval": "2h",
            "routes": [
                {"matchers": ['severity=~"critical|emergency"'], "receiver": "pager",
                 "continue": True, "group_wait": "5s"},
                {"matchers": ['component="postgres"'], "receiver": "db", "group_by": ["..."],
                 "routes": [{"matchers": ["team=dba"], "receiver": "chat"}]},
                {"matchers": ['component="postgres"'], "receiver": "chat"},
            ],
        },
    }  # fmt: skip
    root = build_route(NotifyConfig.model_validate(spec).route)

    def receivers(**labels: str) -> list[str]:
        return [r.receiver for r in match_routes(root, labels)]

    assert receivers(severity="info") == ["root"]
    assert receivers(severity="critical") == ["pager"]
    assert receivers(severity="critical", component="postgres") == ["pager", "db"]  # continue
    assert receivers(severity="warning", component="postgres", team="dba") == ["chat"]
    pager = root.children[0]
    assert (pager.group_wait, pager.repeat_interval, pager.cooldown) == (5, 7200, 300)
    db = root.children[1]
    key, labels = group_of(db, {"alertname": "X", "instance": "w1"})
    assert key == '0.1:{alertname="X",instance="w1"}'  # "...": every label
    assert labels == {"alertname": "X", "instance": "w1"}
    assert group_of(root, {"alertname": "X", "instance": "w1"})[0] == '0:{alertname="X"}'


async def test_a_broken_rule_file_stops_the_monitor_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: Broken, expr: 'x >', severity: warning}\n")
    proc = Proc("monitor", env={"TGFLOW_MONITOR_RULES_PATH": str(bad), "TGFLOW_MONITOR_PORT": "0"})
    try:
        assert await proc.start().wait(30) == 2
        assert "rule Broken" in proc.output()
        assert "does not load" in proc.output()
    finally:
        proc.stop()
