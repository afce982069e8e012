"""One error root. Entry points translate: HTTP to Writer's envelope, CLI to exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, named by the input (or field) and the rule it broke."""

    description: str
    rule: str
    input: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class CopydeskError(Exception):
    """Root of every error Copydesk raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- request problems (the caller can fix them; retrying unchanged never helps) ---------


class InvalidRequest(CopydeskError):
    """The request is malformed or breaks a rule; carries one Problem per violation."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.description for p in problems) or "invalid request")
        self.problems = problems


class InvalidInputs(InvalidRequest):
    """Inputs that do not match the agent's schema."""


class AgentDefinitionInvalid(CopydeskError):
    """An agent file failed validation. ``problems`` name the field and the fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class NotFound(CopydeskError):
    """A resource does not exist, or belongs to another organisation."""

    resource = "resource"

    def __init__(self, resource_id: str) -> None:
        super().__init__(f"{self.resource} {resource_id!r} was not found")
        self.resource_id = resource_id


class ApplicationNotFound(NotFound):
    resource = "application"


class JobNotFound(NotFound):
    resource = "job"


class FileNotFound(NotFound):
    resource = "file"


class BatchNotFound(NotFound):
    resource = "batch"


class WebhookNotFound(NotFound):
    resource = "webhook endpoint"


class DeliveryNotFound(NotFound):
    resource = "webhook delivery"


class ApiKeyNotFound(NotFound):
    resource = "api key"


class OrganizationNotFound(NotFound):
    resource = "organisation"


class JobNotRetryable(CopydeskError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} is {status}; only failed jobs can be retried")
        self.job_id = job_id
        self.status = status


class FileNotRetryable(CopydeskError):
    def __init__(self, file_id: str, status: str) -> None:
        super().__init__(f"file {file_id!r} is {status}; only failed files can be retried")
        self.file_id = file_id
        self.status = status


class IdempotencyKeyReused(CopydeskError):
    """An Idempotency-Key already used for a different request (method, path or body)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the Idempotency-Key {key!r} was already used for a different request "
            "(another method, path, query or body); use a new key for a new request"
        )
        self.key = key


class IdempotencyKeyInProgress(CopydeskError):
    """The request that first used this Idempotency-Key is still being processed."""

    def __init__(self, key: str, waited_s: float) -> None:
        super().__init__(
            f"a request with the Idempotency-Key {key!r} is still being processed "
            f"(waited {waited_s:g}s); retry shortly to get its answer"
        )
        self.key = key
        self.waited_s = waited_s


class PayloadTooLarge(CopydeskError):
    """An upload over the size limit (checked while it is read, before it is stored)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"the file is larger than the upload limit of {limit_bytes} bytes "
            f"({limit_bytes // (1024 * 1024)} MB)"
        )
        self.limit_bytes = limit_bytes


class BatchTooLarge(PayloadTooLarge):
    """A batch body over the batch size limit (checked while it is read)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(limit_bytes)
        self.message = (
            f"the batch body is larger than the limit of {limit_bytes} bytes "
            "(COPYDESK_BATCH_MAX_BYTES)"
        )
        self.args = (self.message,)


class BatchNotRetryable(CopydeskError):
    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id!r} is {status}; its failed rows cannot be retried")
        self.batch_id = batch_id
        self.status = status


class Unauthenticated(CopydeskError):
    """No key, or a key that is unknown or revoked."""


class ConfigurationError(CopydeskError):
    """Settings or a provider reference that cannot work; the message says how to fix it."""


# --- provider failures (classified so the job engine can decide retry or fail) ----------


class ProviderError(CopydeskError):
    """A model provider failed. ``transient`` says whether trying again may help."""

    transient = False

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class ProviderRateLimited(ProviderError):
    transient = True

    def __init__(self, provider: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after_s = retry_after_s


class ProviderUnavailable(ProviderError):
    """5xx, connection refused or reset: the server may come back."""

    transient = True

    def __init__(self, provider: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after_s = retry_after_s


class ProviderTimeout(ProviderError):
    transient = True


class ProviderRejected(ProviderError):
    """The provider refused the request itself (400-class): retrying cannot help."""
