"""The monitor API: alerts, silences and rules (views of collected data are in views.py).

Served by the monitor under /v1/monitoring; the gateway proxies the same paths.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.monitor.clock import iso
from services.monitor.engine import Engine
from services.monitor.http import ApiError, body_model, json_response, query_model
from services.monitor.lifecycle import Alert, AlertState
from services.monitor.matchers import MatcherError, matcher_from_json
from services.monitor.rules.durations import Duration, format_duration
from services.monitor.rules.model import Severity
from services.monitor.silences import Silence
from shared.ids import uuid7
from shared.text import storable_time

MAX_SILENCE = 366 * 86_400.0
MAX_WINDOW = 3660 * 86_400.0  # statistics look back at most ten years
StorableTime = Annotated[AwareDatetime, AfterValidator(storable_time)]


def alert_json(a: Alert, now: float) -> dict[str, Any]:
    a.refresh()
    end = a.resolved_at if a.resolved_at is not None else now
    return {
        "id": str(a.id),
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "severity": a.severity,
        "state": a.state.value,
        "labels": a.labels,
        "annotations": a.annotations,
        "value": a.value,
        "active_at": iso(a.active_at),
        "fired_at": iso(a.fired_at),
        "resolved_at": iso(a.resolved_at),
        "resolved_by": a.resolved_by,
        "acknowledged_at": iso(a.acknowledged_at),
        "acknowledged_by": a.acknowledged_by,
        "muted_by": a.muted_by if a.is_open else [],
        "duration_seconds": round(end - a.active_at, 3),
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActiveQuery(_Strict):
    severity: Severity | None = None
    state: AlertState | None = None
    rule: str | None = None


class HistoryQuery(_Strict):
    limit: int = Field(default=100, ge=1, le=1000)
    before: StorableTime | None = None
    rule: str | None = None
    severity: Severity | None = None
    state: AlertState | None = None


class StatisticsQuery(_Strict):
    window: Duration = Field(default=7 * 86_400.0, le=MAX_WINDOW)


class Actor(_Strict):
    by: str = Field(default="api", min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)


class SilenceAlert(Actor):
    duration: Duration = Field(default=3600.0, gt=0, le=MAX_SILENCE)


class NewSilence(_Strict):
    matchers: list[Any] = Field(min_length=1, max_length=50)
    starts_at: StorableTime | None = None
    ends_at: StorableTime | None = None
    duration: Duration | None = Field(default=None, gt=0, le=MAX_SILENCE)
    created_by: str = Field(default="api", min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)

    @field_validator("matchers")
    @classmethod
    def _parse(cls, value: list[Any]) -> list[Any]:
        try:
            parsed = [matcher_from_json(m) for m in value]
        except MatcherError as exc:
            raise ValueError(str(exc)) from None
        if all(m.matches({}) for m in parsed):
            raise ValueError("the matchers would silence every alert; add one that needs a label")
        return parsed


class SilenceQuery(_Strict):
    state: Literal["active", "pending", "expired", "all"] = "all"


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"{what}_not_found", f"No {what} {value}.") from None


class AlertsApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _open_alert(self, request: Request) -> Alert:
        alert_id = _uuid(request.path_params["alert_id"], "alert")
        alert = self.engine.tracker.find(alert_id)
        if alert is not None:
            return alert
        stored = await self.engine.repo.alert(alert_id)
        if stored is None:
            raise ApiError(404, "alert_not_found", f"No alert {alert_id}.")
        raise ApiError(409, "alert_resolved", f"Alert {alert_id} is already resolved.")

    async def active(self, request: Request) -> Response:
        q = query_model(request, ActiveQuery)
        now = self.engine.clock.now()
        alerts = [
            a
            for a in self.engine.tracker.open.values()
            if (q.severity is None or a.severity == q.severity.value)
            and (q.state is None or a.state is q.state)
            and (q.rule is None or a.rule == q.rule)
        ]
        alerts.sort(key=lambda a: (-Severity(a.severity).rank, a.active_at))
        return json_response({"alerts": [alert_json(a, now) for a in alerts], "count": len(alerts)})

    async def one(self, request: Request) -> Response:
        alert_id = _uuid(request.path_params["alert_id"], "alert")
        alert = self.engine.tracker.find(alert_id) or await self.engine.repo.alert(alert_id)
        if alert is None:
            raise ApiError(404, "alert_not_found", f"No alert {alert_id}.")
        return json_response(alert_json(alert, self.engine.clock.now()))

    async def history(self, request: Request) -> Response:
        q = query_model(request, HistoryQuery)
        filters = {
            k: v.value if hasattr(v, "value") else v
            for k, v in (("rule", q.rule), ("severity", q.severity), ("state", q.state))
            if v is not None
        }
        before = q.before.timestamp() if q.before else None
        rows = await self.engine.repo.history(limit=q.limit, before=before, filters=filters)
        now = self.engine.clock.now()
        next_before = iso(rows[-1].active_at) if len(rows) == q.limit else None
        return json_response(
            {"alerts": [alert_json(a, now) for a in rows], "next_before": next_before}
        )

    async def statistics(self, request: Request) -> Response:
        q = query_model(request, StatisticsQuery)
        now = self.engine.clock.now()
        stored = await self.engine.repo.statistics(now - q.window)
        by_severity: dict[str, int] = {}
        for row in stored["by_rule"]:
            by_severity[row["severity"]] = by_severity.get(row["severity"], 0) + row["total"]
        resolved = [r for r in stored["by_rule"] if r["mttr"] is not None]
        weight = sum(r["resolved"] for r in resolved)
        mttr = sum(r["mttr"] * r["resolved"] for r in resolved) / weight if weight else None
        return json_response(
            {
                "window": format_duration(q.window),
                "since": iso(now - q.window),
                "total": sum(r["total"] for r in stored["by_rule"]),
                "by_state": stored["by_state"],
                "by_severity": by_severity,
                "mean_time_to_resolve_seconds": round(mttr, 3) if mttr is not None else None,
                "by_rule": [
                    {
                        "rule": r["rule"],
                        "severity": r["severity"],
                        "total": r["total"],
                        "resolved": r["resolved"],
                        "mean_time_to_resolve_seconds": _round(r["mttr"]),
                    }
                    for r in stored["by_rule"]
                ],
                "open": _count_open(self.engine),
                "receivers": {n: s.to_json() for n, s in self.engine.dispatcher.status.items()},
            }
        )

    async def acknowledge(self, request: Request) -> Response:
        body = await body_model(request, Actor)
        async with self.engine.lock:
            alert = await self._open_alert(request)
            self.engine.tracker.acknowledge(alert, self.engine.clock.now(), body.by)
            await self._save()
        return json_response(alert_json(alert, self.engine.clock.now()))

    async def resolve(self, request: Request) -> Response:
        body = await body_model(request, Actor)
        async with self.engine.lock:
            alert = await self._open_alert(request)
            self.engine.tracker.resolve(alert, self.engine.clock.now(), body.by)
            await self._save()
        return json_response(alert_json(alert, self.engine.clock.now()))

    async def silence(self, request: Request) -> Response:
        body = await body_model(request, SilenceAlert)
        alert = await self._open_alert(request)
        raw = [{"name": k, "op": "=", "value": v} for k, v in sorted(alert.labels.items())]
        spec = NewSilence(
            matchers=raw, duration=body.duration, created_by=body.by, comment=body.comment
        )
        silence = await create_silence(self.engine, spec)
        return json_response(silence.to_json(self.engine.clock.now()), 201)

    async def _save(self) -> None:
        changed, deleted = self.engine.tracker.drain()
        try:
            await self.engine.repo.save_alerts(changed, deleted)
        except Exception:
            for alert in changed:  # the next cycle retries the write
                self.engine.tracker.changed.setdefault(alert.id, alert)
            raise


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _count_open(engine: Engine) -> dict[str, int]:
    out: dict[str, int] = {}
    for alert in engine.tracker.open.values():
        out[alert.state.value] = out.get(alert.state.value, 0) + 1
    return out


async def create_silence(engine: Engine, spec: NewSilence) -> Silence:
    now = engine.clock.now()
    starts = spec.starts_at.timestamp() if spec.starts_at else now
    if spec.ends_at is not None and spec.duration is not None:
        raise ApiError(422, "invalid_request", "Give ends_at or duration, not both.")
    if spec.ends_at is not None:
        ends = spec.ends_at.timestamp()
    else:
        ends = starts + (spec.duration or 3600.0)
    if ends <= max(starts, now):
        raise ApiError(422, "invalid_request", "A silence must end after it starts and after now.")
    if ends - starts > MAX_SILENCE:
        raise ApiError(422, "invalid_request", "A silence may last at most 366 days.")
    silence = Silence(uuid7(), spec.matchers, starts, ends, spec.created_by, spec.comment, now, now)
    await engine.repo.create_silence(silence)
    engine.silences.append(silence)
    return silence


class SilencesApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def list_all(self, request: Request) -> Response:
        q = query_model(request, SilenceQuery)
        now = self.engine.clock.now()
        silences = await self.engine.repo.silences()
        shown = [s for s in silences if q.state == "all" or s.state(now) == q.state]
        return json_response({"silences": [s.to_json(now) for s in shown], "count": len(shown)})

    async def create(self, request: Request) -> Response:
        spec = await body_model(request, NewSilence)
        silence = await create_silence(self.engine, spec)
        return json_response(silence.to_json(self.engine.clock.now()), 201)

    async def expire(self, request: Request) -> Response:
        silence_id = _uuid(request.path_params["silence_id"], "silence")
        now = self.engine.clock.now()
        silence = await self.engine.repo.expire_silence(silence_id, now)
        if silence is None:
            raise ApiError(404, "silence_not_found", f"No silence {silence_id}.")
        self.engine.silences = [s for s in self.engine.silences if s.id != silence_id]
        return json_response(silence.to_json(now))


def rules_view(engine: Engine) -> list[dict[str, Any]]:
    open_by_rule: dict[str, dict[str, int]] = {}
    for alert in engine.tracker.open.values():
        counts = open_by_rule.setdefault(alert.rule, {})
        counts[alert.state.value] = counts.get(alert.state.value, 0) + 1
    out = []
    for rule in engine.rules:
        status = engine.rule_status[rule.name]
        out.append(
            {
                "name": rule.name,
                "expr": rule.expr_text,
                "for": format_duration(rule.for_seconds) if rule.for_seconds else "0s",
                "keep_firing_for": format_duration(rule.keep_firing_for)
                if rule.keep_firing_for
                else "0s",
                "severity": rule.severity.value,
                "labels": rule.labels,
                "annotations": rule.annotations,
                "no_data": rule.no_data.value,
                "source": rule.source,
                "alerts": open_by_rule.get(rule.name, {}),
                "last_evaluation": {
                    "health": status.health.value,
                    "error": status.error,
                    "at": iso(status.evaluated_at),
                    "duration_seconds": round(status.duration, 6),
                    "series": status.series,
                    "matches": status.matches,
                },
            }
        )
    return out


def routes(engine: Engine) -> list[Route]:
    alerts, silences = AlertsApi(engine), SilencesApi(engine)

    async def rules(_: Request) -> Response:
        return json_response({"rules": rules_view(engine)})

    prefix = "/v1/monitoring"
    return [
        Route(f"{prefix}/alerts/active", alerts.active),
        Route(f"{prefix}/alerts/history", alerts.history),
        Route(f"{prefix}/alerts/statistics", alerts.statistics),
        Route(f"{prefix}/alerts/{{alert_id}}", alerts.one),
        Route(f"{prefix}/alerts/{{alert_id}}/acknowledge", alerts.acknowledge, methods=["POST"]),
        Route(f"{prefix}/alerts/{{alert_id}}/silence", alerts.silence, methods=["POST"]),
        Route(f"{prefix}/alerts/{{alert_id}}/resolve", alerts.resolve, methods=["POST"]),
        Route(f"{prefix}/silences", silences.list_all, methods=["GET"]),
        Route(f"{prefix}/silences", silences.create, methods=["POST"]),
        Route(f"{prefix}/silences/{{silence_id}}", silences.expire, methods=["DELETE"]),
        Route(f"{prefix}/rules", rules),
    ]
