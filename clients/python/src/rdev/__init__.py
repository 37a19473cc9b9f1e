"""rdev's Python client.

>>> import rdev
>>> with rdev.Client("http://127.0.0.1:8080", api_key="rdev_...") as client:
...     result = client.commands.run("demo", "make test")
...     print(result.exit_code, result.stdout)

:class:`Client` is synchronous, :class:`AsyncClient` the same surface for
asyncio. :func:`verify_webhook` checks rdev's signed webhook deliveries.
"""

from ._async import AsyncClient, AsyncEventStream, AsyncRunningCommand
from ._base import __version__
from ._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FieldError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RdevError,
    ServerError,
    ValidationError,
)
from ._models import (
    ApiKey,
    AuditEntry,
    Command,
    CommandResult,
    Delivery,
    DeliveryAttempt,
    EndEvent,
    Event,
    GapEvent,
    OutputEvent,
    Page,
    Project,
    Secret,
    StatusEvent,
    TestDelivery,
    Webhook,
)
from ._requests import UNSET
from ._sync import Client, EventStream, RunningCommand
from ._webhooks import WebhookEvent, WebhookVerificationError, verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncRunningCommand",
    "AuditEntry",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Command",
    "CommandResult",
    "ConflictError",
    "Delivery",
    "DeliveryAttempt",
    "EndEvent",
    "Event",
    "EventStream",
    "FieldError",
    "GapEvent",
    "NotFoundError",
    "OutputEvent",
    "Page",
    "PermissionDeniedError",
    "Project",
    "Secret",
    "RateLimitError",
    "RdevError",
    "RunningCommand",
    "ServerError",
    "StatusEvent",
    "TestDelivery",
    "UNSET",
    "ValidationError",
    "Webhook",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
