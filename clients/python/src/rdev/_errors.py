"""Errors: every problem+json answer of the API becomes an :class:`APIError`
(a subclass per common status), and transport failures an
:class:`APIConnectionError`. A command that exits non-zero is *not* an
error: it is a result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a 422 answer."""

    field: str
    message: str


class RdevError(Exception):
    """Base of every error this package raises."""


class APIConnectionError(RdevError):
    """No answer: the API could not be reached, or the connection broke."""


class APIError(RdevError):
    """An error answer (RFC 9457 problem+json).

    ``status``, ``title``, ``detail``, ``type`` and ``errors`` (field errors
    of a validation failure) come from the problem document; ``body`` is the
    whole document as parsed (or ``{}`` when the answer was not JSON)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        errors: Optional[list[FieldError]] = None,
        body: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors: list[FieldError] = list(errors or [])
        self.body: Mapping[str, Any] = body or {}
        self.headers: Mapping[str, str] = headers or {}
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.title} ({self.status})"
        if not self.errors:
            return f"{text}: {self.detail}" if self.detail else text
        return text + "".join(f"\n  {e.field}: {e.message}" for e in self.errors)

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (429, 5xx)."""
        return self.status == 429 or self.status >= 500


class BadRequestError(APIError):
    """400: malformed request."""


class AuthenticationError(APIError):
    """401: no key, unknown, revoked or expired key."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope, the address is not allowed, or the
    project's command policy refuses the command."""


class NotFoundError(APIError):
    """404: no such resource, or not visible to the key."""


class ConflictError(APIError):
    """409: e.g. a name already taken, or cancelling a finished command."""


class ValidationError(APIError):
    """422: well-formed but invalid; ``errors`` names each field."""


class RateLimitError(APIError):
    """429: the key's rate limit is spent (or too many event streams)."""

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds to wait, from ``Retry-After``, when the server sent it."""
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class ServerError(APIError):
    """5xx."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_from_response(status: int, reason: str, body: bytes, headers: Mapping[str, str]) -> APIError:
    """The :class:`APIError` for an error answer; tolerates bodies that are
    not problem+json (a proxy's HTML page, an empty body)."""
    import json

    doc: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else {}
        if isinstance(parsed, dict):
            doc = parsed
    except ValueError:
        pass
    title = doc.get("title") if isinstance(doc.get("title"), str) else reason or "error"
    detail = doc.get("detail")
    if not isinstance(detail, str):
        detail = body[:500].decode("utf-8", "replace").strip() if not doc else ""
    errors = [
        FieldError(str(e.get("field", "")), str(e.get("message", "")))
        for e in doc.get("errors") or []
        if isinstance(e, dict)
    ]
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(
        status,
        title,
        detail,
        type=str(doc.get("type", "about:blank")),
        errors=errors,
        body=doc,
        headers={k.lower(): v for k, v in headers.items()},
    )
