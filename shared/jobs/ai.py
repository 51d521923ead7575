"""AI job types and the provider catalogue they are checked against.

Providers speak the OpenAI-compatible chat completions API. The catalogue comes from
``TGFLOW_AI_PROVIDERS`` (a JSON list) or ``TGFLOW_AI_PROVIDERS_FILE`` (YAML or JSON);
with neither, one built-in ``sandbox`` provider points at ``TGFLOW_AI_SANDBOX_URL``.
The gateway rejects unknown providers and models and over-long prompts with 422 before
a job is queued; the worker checks again, since its configuration is what it calls.
"""

from __future__ import annotations

import functools
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Literal, Self

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

from shared.config import BaseAppSettings
from shared.jobs.contract import JobType, ParamsRejected, QueueKind, RetryPolicy, register
from shared.jobs.telegram import INT32_MAX, normalize_peer

SANDBOX_PROVIDER = "sandbox"
SANDBOX_MODEL = "sandbox-extractive-1"
# Tokens per message for role and framing, and to prime the reply (as OpenAI counts).
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3


class ModelSpec(BaseModel):
    """What tgflow knows of one model: its context size and its prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context_tokens: int = Field(default=8192, ge=16)
    prompt_price_per_1k: float = Field(default=0.0, ge=0)
    completion_price_per_1k: float = Field(default=0.0, ge=0)
    chars_per_token: float = Field(
        default=3.0, gt=0, description="For the pre-call size estimate; lower is stricter."
    )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_price_per_1k
            + completion_tokens * self.completion_price_per_1k
        ) / 1000


class ProviderSpec(BaseModel):
    """One OpenAI-compatible endpoint and the limits tgflow keeps towards it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, description="Read the key from this variable.")
    default_model: str = Field(min_length=1)
    models: dict[str, ModelSpec] = {}
    allow_unlisted_models: bool = False
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=120.0, gt=0)
    concurrency: int = Field(default=3, ge=1, le=100_000)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=30.0, gt=0)

    def model(self, name: str) -> ModelSpec | None:
        """A model's spec; the default model and, if allowed, unlisted ones share one."""
        spec = self.models.get(name)
        if spec is None and (name == self.default_model or self.allow_unlisted_models):
            return self.models.get(self.default_model, ModelSpec())
        return spec

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env) if self.api_key_env else None


_PROVIDER_LIST = TypeAdapter(list[ProviderSpec])


class Catalog:
    """The providers one process may call, by name, and the default one."""

    def __init__(self, providers: list[ProviderSpec], default: str = "") -> None:
        if not providers:
            raise ValueError("the AI provider catalogue is empty")
        self.providers = {p.name: p for p in providers}
        if len(self.providers) != len(providers):
            raise ValueError("AI provider names must be unique")
        self.default = default or providers[0].name
        if self.default not in self.providers:
            raise ValueError(f"default AI provider {self.default!r} is not configured")

    def resolve(self, provider: str | None, model: str | None) -> tuple[ProviderSpec, str]:
        """The provider and model a job will use; ``ParamsRejected`` for unknown ones."""
        name = provider or self.default
        spec = self.providers.get(name)
        if spec is None:
            known = ", ".join(sorted(self.providers))
            raise ParamsRejected(
                "unknown_provider", "provider", f"Unknown AI provider {name!r}; known: {known}."
            )
        chosen = model or spec.default_model
        if spec.model(chosen) is None:
            known = ", ".join(sorted(spec.models))
            raise ParamsRejected(
                "unknown_model",
                "model",
                f"Provider {name!r} has no model {chosen!r}; known: {known}.",
            )
        return spec, chosen


def sandbox_provider(base_url: str) -> ProviderSpec:
    return ProviderSpec(
        name=SANDBOX_PROVIDER,
        base_url=base_url,
        default_model=SANDBOX_MODEL,
        models={SANDBOX_MODEL: ModelSpec(context_tokens=16_384)},
    )


@functools.lru_cache(maxsize=8)
def _load(raw: str, path: str, default: str, sandbox_url: str) -> Catalog:
    if raw and path:
        raise ValueError("give TGFLOW_AI_PROVIDERS or TGFLOW_AI_PROVIDERS_FILE, not both")
    data: Any = None
    if raw:
        data = orjson.loads(raw)
    elif path:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if data is None:
        return Catalog([sandbox_provider(sandbox_url)], default)
    return Catalog(_PROVIDER_LIST.validate_python(data), default)


def catalog_for(settings: BaseAppSettings) -> Catalog:
    """The catalogue these settings describe; read once per process and cached."""
    return _load(
        settings.ai_providers,
        settings.ai_providers_file,
        settings.ai_default_provider,
        settings.ai_sandbox_url,
    )


_PIECE = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str, spec: ModelSpec) -> int:
    """A deliberately high token count, without a tokenizer.

    BPE tokenizers average about 4 characters a token on English prose, fewer on other
    scripts, and split code and punctuation finely. The estimate is the largest of
    characters / ``chars_per_token`` (3 by default), UTF-8 bytes / 4, and the number of
    words and punctuation marks, so a prompt that passes fits the real model.
    """
    pieces = sum(1 for _ in _PIECE.finditer(text))
    return math.ceil(max(len(text) / spec.chars_per_token, len(text.encode()) / 4, pieces))


# --- ai.complete -------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(max_length=2_000_000)


class CompleteParams(BaseModel):
    """A chat completion: ``messages``, or a ``prompt`` with an optional ``system`` line."""

    model_config = ConfigDict(extra="forbid")

    provider: str | None = Field(default=None, description="Default: the configured default.")
    model: str | None = Field(default=None, description="Default: the provider's default.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=1000)
    prompt: str | None = Field(default=None, min_length=1, max_length=2_000_000)
    system: str | None = Field(default=None, max_length=200_000)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    response_schema: dict[str, JsonValue] | None = Field(
        default=None, description="JSON Schema the answer must follow (structured output)."
    )
    schema_name: str = Field(default="result", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    stream: bool = Field(default=False, description="Stream the answer (progress is recorded).")
    cache: bool = Field(default=True, description="Reuse and store cached answers.")
    cache_ttl_seconds: int | None = Field(default=None, ge=1, le=90 * 86_400)

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt")
        if self.system is not None and self.prompt is None:
            raise ValueError("system goes with prompt; put it in messages otherwise")
        return self

    def chat(self) -> list[ChatMessage]:
        """The conversation sent to the model."""
        if self.messages is not None:
            return self.messages
        head = [ChatMessage(role="system", content=self.system)] if self.system else []
        return [*head, ChatMessage(role="user", content=self.prompt or "")]


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = Field(default=False, description="The provider reported no usage.")


class CompleteResult(BaseModel):
    text: str
    data: JsonValue = Field(default=None, description="The parsed answer, with response_schema.")
    finish_reason: str
    usage: TokenUsage
    latency_ms: float = Field(description="Provider call time (cache lookup time if cached).")
    provider: str
    model: str
    cached: bool = False
    cost: float = Field(default=0.0, description="In the catalogue's currency; 0 if cached.")
    streamed: bool = False
    requested_at: AwareDatetime | None = None


def prompt_tokens(messages: list[ChatMessage], spec: ModelSpec) -> int:
    """The estimated prompt size of a conversation, framing included."""
    return REPLY_OVERHEAD + sum(
        MESSAGE_OVERHEAD + estimate_tokens(m.content, spec) for m in messages
    )


def check_prompt(params: CompleteParams, settings: BaseAppSettings) -> None:
    """Gateway and worker: the provider and model exist and the prompt fits the model."""
    provider, model = catalog_for(settings).resolve(params.provider, params.model)
    spec = provider.model(model)
    assert spec is not None  # resolve() checked it
    prompt = prompt_tokens(params.chat(), spec)
    field = "messages" if params.messages is not None else "prompt"
    if prompt > spec.context_tokens:
        raise ParamsRejected(
            "prompt_too_long",
            field,
            f"The prompt is about {prompt} tokens; {model} takes {spec.context_tokens}.",
        )
    if params.max_tokens and prompt + params.max_tokens > spec.context_tokens:
        raise ParamsRejected(
            "prompt_too_long",
            "max_tokens",
            f"About {prompt} prompt tokens plus max_tokens {params.max_tokens} exceed "
            f"the {spec.context_tokens} tokens of {model}.",
        )


COMPLETE = register(
    JobType(
        name="ai.complete",
        params=CompleteParams,
        result=CompleteResult,
        queue=QueueKind.AI,
        timeout=600.0,
        summary="Run a chat completion on a configured AI provider.",
        retry=RetryPolicy(max_tries=5, base_seconds=1.0, cap_seconds=60.0),
        validate=check_prompt,
    )
)


# --- chains: jobs that run Telegram and AI jobs as their steps -------------------------


class StepOut(BaseModel):
    """One step of a chain: a child job, listed in the parent's result and progress."""

    name: str
    type: str
    job_id: str
    status: str
    attempts: int = 0


class ModelChoice(BaseModel):
    """The model part of a chain's params."""

    model_config = ConfigDict(extra="forbid")

    provider: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    cache: bool = True


class ChatParams(ModelChoice):
    account_id: uuid.UUID
    peer: str = Field(description="me, @username, numeric id, t.me link or +phone")

    @field_validator("peer")
    @classmethod
    def _peer(cls, value: str) -> str:
        return normalize_peer(value)


class SummarizeChatParams(ChatParams):
    limit: int = Field(default=50, ge=1, le=500, description="Newest messages to read.")
    since: AwareDatetime | None = Field(default=None, description="Only messages after this.")
    style: Literal["brief", "detailed", "bullets"] = "brief"


class SummarizeChatResult(BaseModel):
    summary: str
    messages: int = Field(description="Messages the summary covers.")
    first_message_id: int | None = None
    last_message_id: int | None = None
    provider: str
    model: str
    usage: TokenUsage
    cost: float
    cached: bool
    steps: list[StepOut]


class ReplyParams(ChatParams):
    # (its history is read from message_id + 1 down, itself an MTProto int)
    message_id: int = Field(ge=1, le=INT32_MAX - 1, description="The message to answer.")
    context: int = Field(default=20, ge=1, le=100, description="Messages read up to it.")
    instructions: str | None = Field(default=None, max_length=4000)
    send: bool = Field(default=False, description="Send the reply with telegram.send_message.")


class ReplyResult(BaseModel):
    text: str
    sent: bool
    sent_message_id: int | None = None
    provider: str
    model: str
    usage: TokenUsage
    cost: float
    cached: bool
    steps: list[StepOut]


def check_model(params: ModelChoice, settings: BaseAppSettings) -> None:
    """Gateway and worker: the provider and model of a chain exist."""
    catalog_for(settings).resolve(params.provider, params.model)


_CHAIN_RETRY = RetryPolicy(max_tries=3, base_seconds=1.0, cap_seconds=30.0)

SUMMARIZE_CHAT = register(
    JobType(
        name="ai.summarize_chat",
        params=SummarizeChatParams,
        result=SummarizeChatResult,
        queue=QueueKind.AI,
        timeout=600.0,
        summary="Read a chat's history (telegram.get_history) and summarise it (ai.complete).",
        retry=_CHAIN_RETRY,
        validate=check_model,
    )
)

REPLY = register(
    JobType(
        name="ai.reply",
        params=ReplyParams,
        result=ReplyResult,
        queue=QueueKind.AI,
        timeout=600.0,
        summary="Write a reply to a message from the chat around it, and send it if asked.",
        retry=_CHAIN_RETRY,
        validate=check_model,
    )
)
