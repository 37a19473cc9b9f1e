"""Verifying rdev's webhook deliveries (the Standard Webhooks scheme)."""

from __future__ import annotations

import binascii
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Optional, Union

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from ._errors import RdevError
from ._models import Command, parse_time


class WebhookVerificationError(RdevError):
    """The delivery is not authentic (bad or missing signature), or its
    timestamp is outside the tolerance (a replay, or a wrong clock)."""


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event: ``type`` is ``command.succeeded``, ``command.failed``,
    …, or ``webhook.test``; ``command`` is ``data`` read as a command (for
    ``command.*`` events)."""

    id: str
    type: str
    timestamp: Optional[datetime]
    data: dict[str, Any]
    command: Optional[Command]


def verify_webhook(
    payload: Union[bytes, str],
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: timedelta = timedelta(minutes=5),
    now: Optional[datetime] = None,
) -> WebhookEvent:
    """Checks a delivery and returns its event.

    ``payload`` is the raw request body (bytes as received: never
    re-serialised JSON), ``headers`` the request's headers (any case),
    ``secret`` the endpoint's ``whsec_…`` secret. The signature is computed
    by the ``standardwebhooks`` package and compared in constant time with
    each ``v1,`` entry of ``webhook-signature``; ``webhook-timestamp`` must
    be within ``tolerance`` of ``now`` (default: the current time).

    Raises :class:`WebhookVerificationError` when the delivery is not
    authentic."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, signatures = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = datetime.fromtimestamp(int(ts), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise WebhookVerificationError(f"bad webhook-timestamp {ts!r}") from None
    current = now or datetime.now(tz=timezone.utc)
    if abs(current - sent) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too far in the future")
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    try:
        expected = Webhook(secret).sign(msg_id, sent, body).split(",", 1)[1]
    except (binascii.Error, ValueError, EmptyWebhookSecretError) as e:
        raise WebhookVerificationError(f"unusable secret: {e}") from None
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            break
    else:
        raise WebhookVerificationError("no matching signature")
    try:
        doc = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the payload is not JSON") from None
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    kind = str(doc.get("type", ""))
    command = Command.from_json(data) if kind.startswith("command.") and "id" in data else None
    return WebhookEvent(str(doc.get("id", msg_id)), kind, parse_time(doc.get("timestamp")), data, command)
