"""The provider catalogue, the size estimate and the error mapping, without services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from services.sandbox.textmodel import count_tokens
from services.worker.ai import errors
from shared.config import BaseAppSettings
from shared.errors import PermanentFailure, RetryableFailure
from shared.jobs.ai import ModelSpec, ProviderSpec, catalog_for, estimate_tokens
from shared.jobs.contract import ParamsRejected

OPENAI = {
    "name": "openai",
    "base_url": "https://api.example.invalid/v1",
    "api_key_env": "EXAMPLE_KEY",
    "default_model": "small",
    "models": {
        "small": {"context_tokens": 1000, "prompt_price_per_1k": 0.15},
        "large": {"context_tokens": 100_000},
    },
    "concurrency": 7,
}


def test_a_yaml_file_configures_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "- name: openai\n"
        "  base_url: https://api.example.invalid/v1\n"
        "  default_model: small\n"
        "- name: local\n"
        "  base_url: http://127.0.0.1:11434/v1\n"
        "  default_model: llama\n"
        "  allow_unlisted_models: true\n"
    )
    monkeypatch.setenv("TGFLOW_AI_PROVIDERS_FILE", str(path))
    monkeypatch.setenv("TGFLOW_AI_DEFAULT_PROVIDER", "local")
    catalog = catalog_for(BaseAppSettings())
    assert catalog.default == "local"
    provider, model = catalog.resolve(None, "anything-ollama-has")
    assert (provider.name, model) == ("local", "anything-ollama-has")
    with pytest.raises(ParamsRejected) as rejected:
        catalog.resolve("openai", "large")
    assert rejected.value.code == "unknown_model"


def test_json_providers_and_their_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGFLOW_AI_PROVIDERS", json.dumps([OPENAI]))
    monkeypatch.setenv("EXAMPLE_KEY", "sk-from-env")
    catalog = catalog_for(BaseAppSettings())
    provider, model = catalog.resolve(None, None)
    assert (provider.name, model, provider.concurrency) == ("openai", "small", 7)
    assert provider.key() == "sk-from-env"
    assert "sk-from-env" not in repr(provider)
    spec = provider.model("small")
    assert spec is not None
    assert spec.cost(2000, 1000) == pytest.approx(0.3)


def test_the_sandbox_is_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGFLOW_AI_SANDBOX_URL", "http://127.0.0.1:9/v1")
    catalog = catalog_for(BaseAppSettings())
    assert list(catalog.providers) == ["sandbox"]
    assert catalog.providers["sandbox"].base_url == "http://127.0.0.1:9/v1"
    assert catalog.providers["sandbox"].concurrency == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TGFLOW_AI_PROVIDERS": "[]"}, "empty"),
        ({"TGFLOW_AI_PROVIDERS": json.dumps([OPENAI, OPENAI])}, "unique"),
        ({"TGFLOW_AI_PROVIDERS": json.dumps([OPENAI]), "TGFLOW_AI_PROVIDERS_FILE": "x"}, "both"),
        (
            {"TGFLOW_AI_PROVIDERS": json.dumps([OPENAI]), "TGFLOW_AI_DEFAULT_PROVIDER": "x"},
            "not configured",
        ),
        ({"TGFLOW_AI_PROVIDERS": json.dumps([{**OPENAI, "base_url": "ftp://x"}])}, "base_url"),
    ],
)
def test_a_bad_catalogue_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        catalog_for(BaseAppSettings())


@pytest.mark.parametrize(
    "text",
    [
        "The harbour closed at noon because of the storm, and the boats stayed in.",
        "def f(x):\n    return {k: v for k, v in x.items() if v is not None}\n",
        "Гавань закрылась в полдень из-за шторма, и лодки остались у причала.",  # noqa: RUF001
        "a" * 500,
    ],
)
def test_the_size_estimate_is_on_the_high_side(text: str) -> None:
    estimate = estimate_tokens(text, ModelSpec())
    assert estimate >= count_tokens(text)
    assert estimate >= len(text.encode()) / 4  # no tokenizer packs more than 4 bytes a token


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert errors.retry_after_seconds({"retry-after": "7"}, now) == 7
    assert errors.retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert errors.retry_after_seconds({"retry-after": date}, now) == 30
    assert errors.retry_after_seconds({"retry-after": "soon"}, now) is None
    assert errors.retry_after_seconds({"retry-after": "99999"}, now) == errors.MAX_RETRY_AFTER
    assert errors.retry_after_seconds({}, now) is None


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "provider_auth", PermanentFailure),
        (403, "provider_auth", PermanentFailure),
        (400, "provider_bad_request", PermanentFailure),
        (404, "provider_not_found", PermanentFailure),
        (429, "provider_rate_limited", RetryableFailure),
        (500, "provider_error", RetryableFailure),
        (503, "provider_error", RetryableFailure),
        (408, "provider_error", RetryableFailure),
    ],
)
def test_statuses_map_to_outcomes(status: int, code: str, kind: type[Exception]) -> None:
    body = b'{"error": {"message": "' + b"x" * 1000 + b'"}}'
    error = errors.from_status("p", status, body, {"retry-after": "3"})
    failure = error.as_failure()
    assert isinstance(failure, kind)
    assert failure.code == code
    assert len(failure.message) < 400  # a provider's long body is cut short
    if status == 429:
        assert failure.details == {"retry_after": 3.0}


def test_provider_spec_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        ProviderSpec.model_validate({**OPENAI, "colour": "blue"})
