"""What the sync and async clients share: configuration, headers, reading
answers, and the retry rule of enqueue requests."""

from __future__ import annotations

import os
import uuid
from typing import Any, Mapping, Optional

import httpx

from ._errors import APIConnectionError, APIError, error_from_response
from ._requests import Req, no_body

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8080"
#: Timeouts of ordinary requests (seconds).
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
#: Event streams: the API sends a keep-alive every 15 s, so 45 s of
#: silence means a dead connection.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)
#: Attempts of an enqueue whose answer was lost (same Idempotency-Key).
CREATE_ATTEMPTS = 4


class BaseClient:
    def __init__(self, url: Optional[str], api_key: Optional[str], give_up_after: float) -> None:
        url = url or os.environ.get("RDEV_URL") or DEFAULT_URL
        api_key = api_key if api_key is not None else os.environ.get("RDEV_API_KEY")
        self.base_url = url.rstrip("/")
        self.give_up_after = give_up_after
        self._headers = {"User-Agent": f"rdev-client-python/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers_for(self, req: Req) -> dict[str, str]:
        return {**self._headers, **req.headers}


def read_answer(req: Req, resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise error_from_response(resp.status_code, resp.reason_phrase, resp.content, resp.headers)
    if req.parse is bytes:
        return resp.content
    if req.parse is no_body:
        return None
    if resp.status_code == 204 or not resp.content:
        return req.parse({})
    try:
        doc = resp.json()
    except ValueError as e:
        raise APIConnectionError(f"{req.method} {req.path}: the answer is not JSON: {e}") from None
    return req.parse(doc)


def transport_error(req: Req, e: httpx.HTTPError) -> APIConnectionError:
    return APIConnectionError(f"{req.method} {req.path}: {type(e).__name__}: {e}")


def with_idempotency_key(req: Req) -> Req:
    """Every enqueue carries an Idempotency-Key (the caller's, or a new one),
    so retrying after a lost answer returns the original command instead of
    running it twice."""
    req.headers.setdefault("Idempotency-Key", f"rdev-py-{uuid.uuid4()}")
    return req


def retry_create(e: Exception) -> bool:
    """Whether an enqueue may be retried: its answer may have been lost, or
    the server asked to come back. A refused connection is not retried."""
    if isinstance(e, APIError):
        return e.status in (429, 502, 503, 504)
    return isinstance(e, APIConnectionError) and not isinstance(e.__cause__, httpx.ConnectError)


def problem_from(resp: httpx.Response) -> APIError:
    return error_from_response(resp.status_code, resp.reason_phrase, resp.content, resp.headers)
