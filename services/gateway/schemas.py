"""Request and response models; the submit body is a union over the job catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.delivery.webhooks import MAX_URL_LENGTH, WebhookState, url_problem
from shared.jobs import REGISTRY, JobStatus
from shared.jobs.record import JobRecord, JobView
from shared.jobs.routing import Priority
from shared.text import storable_time

QueryTime = Annotated[AwareDatetime, AfterValidator(storable_time)]


class SubmitOptions(BaseModel):
    """Fields every job submission accepts besides its type and params."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Submitting the same key again returns the same job.",
    )
    defer_seconds: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Start after a delay."
    )
    run_at: AwareDatetime | None = Field(default=None, description="Start at a time (with zone).")
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Lower the job type's timeout for this job."
    )
    priority: Priority = Field(
        default=Priority.NORMAL,
        description="high: served before every due normal job of the same queue.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="http(s) URL POSTed to, signed, when the job finishes (docs/delivery.md).",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_form(cls, value: str | None) -> str | None:
        if value is not None and (problem := url_problem(value, allow_private=True)):
            raise PydanticCustomError("invalid_webhook_url", "{problem}", {"problem": problem})
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.defer_seconds is not None and self.run_at is not None:
            raise ValueError("give defer_seconds or run_at, not both")
        return self


def _submit_model(name: str) -> type[SubmitOptions]:
    job_type = REGISTRY[name]
    model: type[SubmitOptions] = create_model(
        "Submit_" + name.replace(".", "_"),
        __base__=SubmitOptions,
        __doc__=job_type.summary,
        type=(Literal[name], Field(description=job_type.summary)),  # type: ignore[arg-type]
        params=(job_type.params, Field(default_factory=dict, validate_default=True)),
    )
    return model


def submit_union() -> Any:
    """A discriminated union, so OpenAPI lists every job type's params schema."""
    models = tuple(_submit_model(name) for name in sorted(REGISTRY))
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


class Links(BaseModel):
    self: str


class JobAccepted(BaseModel):
    id: str
    type: str
    status: JobStatus
    created_at: datetime
    run_at: datetime
    links: Links


class JobOut(JobView):
    links: Links
    webhook: WebhookState | None = Field(
        default=None, description="The completion webhook, if one was set (not in listings)."
    )

    @classmethod
    def of(cls, record: JobRecord, webhook: WebhookState | None = None) -> JobOut:
        data = record.model_dump(exclude={"tenant", "queue", "seq", "timeout", "webhook_url"})
        return cls(**data, links=Links(self=f"/v1/jobs/{record.id}"), webhook=webhook)


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None


class JobTypeOut(BaseModel):
    name: str
    queue: str
    summary: str
    timeout_seconds: float
    max_tries: int
    params_schema: dict[str, Any]
    result_schema: dict[str, Any]


StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]
