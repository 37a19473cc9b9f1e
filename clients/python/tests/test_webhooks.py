"""Webhook endpoints and verifying deliveries (Standard Webhooks)."""

from __future__ import annotations

import json
import queue
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

import rdev

# The test vector of the Standard Webhooks specification.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_HEADERS = {
    "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "webhook-timestamp": "1614265330",
    "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_TIME = datetime.fromtimestamp(1614265330, tz=timezone.utc)


def test_standard_webhooks_test_vector_verifies() -> None:
    event = rdev.verify_webhook(VECTOR_BODY, VECTOR_HEADERS, VECTOR_SECRET, now=VECTOR_TIME)
    assert event.id == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    # Header names in any case.
    upper = {k.upper(): v for k, v in VECTOR_HEADERS.items()}
    rdev.verify_webhook(VECTOR_BODY.decode(), upper, VECTOR_SECRET, now=VECTOR_TIME + timedelta(seconds=299))


@pytest.mark.parametrize(
    "body,headers,when",
    [
        (b'{"test": 2432232315}', VECTOR_HEADERS, VECTOR_TIME),  # body changed
        (VECTOR_BODY, {**VECTOR_HEADERS, "webhook-id": "msg_other"}, VECTOR_TIME),
        (VECTOR_BODY, {**VECTOR_HEADERS, "webhook-signature": "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}, VECTOR_TIME),
        (VECTOR_BODY, {k: v for k, v in VECTOR_HEADERS.items() if k != "webhook-signature"}, VECTOR_TIME),
        (VECTOR_BODY, VECTOR_HEADERS, VECTOR_TIME + timedelta(minutes=6)),  # replayed later
        (VECTOR_BODY, VECTOR_HEADERS, None),  # now: years later
    ],
)
def test_tampered_or_stale_deliveries_are_refused(body, headers, when) -> None:
    with pytest.raises(rdev.WebhookVerificationError):
        rdev.verify_webhook(body, headers, VECTOR_SECRET, now=when)


class _Receiver:
    """An HTTP endpoint on loopback that records each POST."""

    def __init__(self) -> None:
        self.received: "queue.Queue[tuple[dict[str, str], bytes]]" = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.put((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, want_type: str) -> tuple[dict[str, str], bytes]:
        while True:
            headers, body = self.received.get(timeout=60)
            if json.loads(body).get("type") == want_type:
                return headers, body


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.server.shutdown()


def test_a_real_delivery_verifies_with_the_endpoint_secret(
    client: rdev.Client, project: str, receiver: _Receiver
) -> None:
    hook = client.webhooks.create(receiver.url, ["command.failed"], project=project)
    assert hook.secret and hook.secret.startswith("whsec_")
    assert client.webhooks.get(hook.id).secret is None  # shown once

    result = client.commands.run(project, "exit 4")
    headers, body = receiver.next("command.failed")
    event = rdev.verify_webhook(body, headers, hook.secret)
    assert event.type == "command.failed"
    assert event.command is not None
    assert (event.command.id, event.command.exit_code) == (result.id, 4)

    with pytest.raises(rdev.WebhookVerificationError):
        rdev.verify_webhook(body.replace(b"4", b"5"), headers, hook.secret)
    with pytest.raises(rdev.WebhookVerificationError):
        rdev.verify_webhook(body, headers, "whsec_" + "QUJD" * 8)

    deliveries = client.webhooks.deliveries(hook.id)
    assert any(d.event_id == event.id for d in deliveries.items)
    client.webhooks.delete(hook.id)
