"""Typed views of the API's JSON. Each keeps the whole document in ``raw``,
so fields a newer server adds are readable before this package knows them,
and unknown fields never break parsing."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Mapping, Optional, TypeVar, Union

T = TypeVar("T")

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_time(value: Any) -> Optional[datetime]:
    """An RFC 3339 timestamp as an aware ``datetime`` (any number of
    fractional digits; ``None`` stays ``None``)."""
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if zone in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tz)


def _build(cls: Any, doc: Mapping[str, Any]) -> Any:
    nested: Mapping[str, Any] = getattr(cls, "_nested", {})
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "raw":
            continue
        v = doc.get(f.name)
        if v is None:
            if f.default is not dataclasses.MISSING:
                v = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                v = f.default_factory()  # type: ignore[misc]
        elif f.name in nested:
            v = [nested[f.name].from_json(x) for x in v]
        elif f.name == "at" or f.name.endswith("_at"):
            v = parse_time(v)
        values[f.name] = v
    return cls(raw=dict(doc), **values)


class _Model:
    @classmethod
    def from_json(cls: Any, doc: Mapping[str, Any]) -> Any:
        return _build(cls, doc)


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})


@dataclass(frozen=True)
class Command(_Model):
    """A command as the API shows it. ``reason`` (why it ended: ``exited``,
    ``signaled``, ``timed_out``, ``cancelled``, ``memory_limit``, …) and
    ``signal`` are ``None`` until it ends, and on servers that predate them."""

    id: str
    project: str
    status: str
    exit_code: Optional[int] = None
    error: Optional[str] = None
    reason: Optional[str] = None
    signal: Optional[int] = None
    command: Optional[str] = None
    argv: Optional[list[str]] = None
    priority: int = 5
    timeout_s: Optional[int] = None
    output_bytes: int = 0
    truncated: bool = False
    worker_id: Optional[str] = None
    created_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether the command has ended (its status is final)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class CommandResult:
    """A finished command and its output. ``stdout``/``stderr`` are the
    stored bytes decoded as UTF-8 (invalid bytes replaced); when
    ``truncated`` the project's ``max_output_bytes`` cut their middle."""

    command: Command
    stdout: str
    stderr: str

    @property
    def id(self) -> str:
        return self.command.id

    @property
    def status(self) -> str:
        return self.command.status

    @property
    def exit_code(self) -> Optional[int]:
        return self.command.exit_code

    @property
    def reason(self) -> Optional[str]:
        return self.command.reason

    @property
    def signal(self) -> Optional[int]:
        return self.command.signal

    @property
    def error(self) -> Optional[str]:
        return self.command.error

    @property
    def truncated(self) -> bool:
        return self.command.truncated

    @property
    def ok(self) -> bool:
        """``status == "succeeded"``."""
        return self.command.status == "succeeded"


@dataclass(frozen=True)
class Project(_Model):
    """A project: a named environment commands run in. Fields a newer
    server adds (e.g. ``network``, ``limits``) are in ``raw``."""

    name: str
    description: str = ""
    executor: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    default_timeout_s: Optional[int] = None
    max_output_bytes: Optional[int] = None
    max_concurrency: Optional[int] = None
    allowed_commands: Optional[list[str]] = None
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Webhook(_Model):
    """A webhook endpoint; ``secret`` only in the answer that created it."""

    id: str
    url: str
    events: list[str] = field(default_factory=list)
    project: Optional[str] = None
    enabled: bool = True
    disabled_reason: Optional[str] = None
    failing_since: Optional[str] = None
    secret: Optional[str] = field(default=None, repr=False)
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class DeliveryAttempt(_Model):
    """One HTTP attempt of a webhook delivery."""

    at: Optional[datetime] = None
    status_code: Optional[int] = None
    duration_ms: Optional[int] = None
    error: Optional[str] = None
    response_excerpt: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Delivery(_Model):
    """One event's delivery to one endpoint, with its attempts."""

    _nested = {"attempts": DeliveryAttempt}

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str
    next_attempt_at: Optional[datetime] = None
    last_status_code: Optional[int] = None
    last_error: Optional[str] = None
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class TestDelivery(_Model):
    """Answer of a webhook test: the event and the delivery made for it."""

    event_id: str
    delivery_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ApiKey(_Model):
    """An API key; ``secret`` only in the create and rotate answers."""

    id: str
    name: str
    prefix: str
    scopes: list[str] = field(default_factory=list)
    projects: Optional[list[str]] = None
    allowed_ips: Optional[list[str]] = None
    rate_limit: Optional[dict[str, int]] = None
    expires_at: Optional[datetime] = None
    revoked_at: Optional[datetime] = None
    last_used_at: Optional[datetime] = None
    created_at: Optional[datetime] = None
    secret: Optional[str] = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Secret(_Model):
    """A project secret as listed: never its value."""

    name: str
    version: int
    set_by: str = ""
    set_by_key_id: Optional[str] = None
    set_at: Optional[datetime] = None
    created_at: Optional[datetime] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class AuditEntry(_Model):
    """One audit log entry."""

    id: int
    at: Optional[datetime]
    actor: str
    action: str
    target_type: str
    outcome: str
    actor_key_id: Optional[str] = None
    ip: Optional[str] = None
    target_id: Optional[str] = None
    project: Optional[str] = None
    details: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next
    (``None`` on the last page)."""

    items: list[T]
    next_cursor: Optional[str]


# Events of a command's live stream.


@dataclass(frozen=True)
class OutputEvent:
    """A chunk of output. ``seq`` numbers chunks 1, 2, 3… across both
    streams; ``data`` is UTF-8 text (invalid bytes replaced)."""

    seq: int
    stream: str
    data: str


@dataclass(frozen=True)
class GapEvent:
    """Chunks ``from_seq``..``to_seq`` were not kept (output truncation)."""

    from_seq: int
    to_seq: int


@dataclass(frozen=True)
class StatusEvent:
    """The command changed status (also sent first on every connection)."""

    command: Command


@dataclass(frozen=True)
class EndEvent:
    """The command ended; always the last event."""

    command: Command


Event = Union[OutputEvent, GapEvent, StatusEvent, EndEvent]
