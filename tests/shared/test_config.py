"""Settings: the production guard and the documented variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import (
    BaseAppSettings,
    GatewaySettings,
    InsecureSettingsError,
    MonitorSettings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parents[2]


def test_production_refuses_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGFLOW_ENV", "production")
    with pytest.raises(InsecureSettingsError):
        GatewaySettings().ensure_safe()
    monkeypatch.setenv("TGFLOW_SECRET_KEY", "a-real-secret-with-enough-entropy-0123456789")
    GatewaySettings().ensure_safe()


def test_development_allows_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGFLOW_ENV", "development")
    WorkerSettings().ensure_safe()


def test_pool_bounds_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGFLOW_DB_POOL_MIN", "9")
    monkeypatch.setenv("TGFLOW_DB_POOL_MAX", "2")
    with pytest.raises(ValueError, match="POOL_MIN"):
        BaseAppSettings()


def test_every_setting_is_documented_in_env_example() -> None:
    documented = set(
        re.findall(r"^#?\s*(TGFLOW_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    fields = {
        f"TGFLOW_{name.upper()}"
        for cls in (GatewaySettings, WorkerSettings, MonitorSettings)
        for name in cls.model_fields
    }
    assert fields - documented == set(), "settings missing from .env.example"
    up_only = {"TGFLOW_DATA_DIR", "TGFLOW_SANDBOX_ADMIN_PORT"}
    assert documented - fields - up_only == set(), ".env.example names unknown settings"
