"""The services' log pipeline: levels decided up front, JSON lines with context, no secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from shared.logs import get_logger, setup_logging


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers, root.level = handlers, level


def test_lines_below_the_level_are_dropped_and_the_rest_scrubbed(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("warning", json=True, service="worker")
    log = get_logger("tgflow.test")
    structlog.contextvars.bind_contextvars(job_id="j-1")
    log.info("job started")
    log.debug("detail")
    log.warning("login failed", session_string="1BVtsOKABu0secret", attempts=2)
    log.error("gave up")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["login failed", "gave up"]
    first = lines[0]
    assert first["level"] == "warning"
    assert first["logger"] == "tgflow.test"
    assert (first["service"], first["job_id"], first["attempts"]) == ("worker", "j-1", 2)
    assert first["session_string"] == "[redacted]"
    assert "timestamp" in first


def test_stdlib_records_share_the_format(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", json=True, service="gateway")
    logging.getLogger("some.library").info("connected")
    logging.getLogger("arq").info("job args: secret")  # ARQ's INFO lines are kept out
    (line,) = [orjson.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["logger"], line["service"]) == (
        "connected",
        "some.library",
        "gateway",
    )
