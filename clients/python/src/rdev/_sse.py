"""A ``text/event-stream`` parser (the WHATWG rules: any of CRLF, LF, CR
ends a line, ``:`` starts a comment, ``data`` lines join with ``\\n``, an
event is dispatched at a blank line) and the reconnect state of a command's
event stream, shared by the sync and async clients.

Exactly-once output rests on the server numbering chunks (``seq``, sent as
the event id): after a drop the stream is reopened with ``Last-Event-ID``
set to the last ``seq`` handed out, and any chunk at or below it is
skipped. An event cut by the drop lacks its blank line, so it is never
dispatched; the server sends it again."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from ._models import Command, EndEvent, Event, GapEvent, OutputEvent, StatusEvent


@dataclass
class RawEvent:
    event: str
    data: str
    id: Optional[str]
    retry: Optional[int]


class SSEParser:
    """Feed bytes as they arrive; iterate the complete events."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: Optional[str] = None
        self._retry: Optional[int] = None
        self._started = False
        self._after_cr = False

    def feed(self, chunk: bytes) -> Iterator[RawEvent]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split between two reads
        self._after_cr = False
        self._buf += chunk
        while True:
            cr = self._buf.find(b"\r")
            lf = self._buf.find(b"\n")
            if cr < 0 and lf < 0:
                return
            if cr >= 0 and (lf < 0 or cr < lf):
                end, skip = cr, 2 if self._buf[cr + 1 : cr + 2] == b"\n" else 1
                if cr + 1 == len(self._buf):
                    self._after_cr = True
            else:
                end, skip = lf, 1
            line = self._buf[:end].decode("utf-8", "replace")
            self._buf = self._buf[end + skip :]
            if not self._started:
                self._started = True
                line = line.lstrip("\ufeff")
            ev = self._line(line)
            if ev is not None:
                yield ev

    def _line(self, line: str) -> Optional[RawEvent]:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = RawEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
            self._data, self._event, self._retry = [], "", None
            return ev
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
# A connection that stayed up this long was healthy: back off from scratch.
HEALTHY_CONNECTION = 5.0


class Follow:
    """Where a command's event stream stands: the last ``seq`` handed out,
    the backoff, and when the API last sent anything."""

    def __init__(self, after_seq: int, give_up_after: float) -> None:
        self.last_seq = after_seq
        self.reconnects = 0
        self.done = False
        self.give_up_after = give_up_after
        self._backoff = BACKOFF_MIN
        self._server_retry: Optional[float] = None
        self._alive = time.monotonic()
        self._opened = time.monotonic()
        self._progressed = False

    def headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream"}
        if self.last_seq > 0:
            h["Last-Event-ID"] = str(self.last_seq)
        return h

    def opened(self) -> None:
        self._opened = time.monotonic()
        self._progressed = False
        self.touch()

    def touch(self) -> None:
        self._alive = time.monotonic()

    def on_event(self, raw: RawEvent) -> Optional[Event]:
        """The typed event to hand out, or ``None`` (a duplicate, a
        keep-alive, an event type this client does not know)."""
        if raw.event == "reconnect":
            # The API is closing this stream on purpose (shutdown, maximum
            # lifetime) and says when to come back.
            self._server_retry = raw.retry / 1000.0 if raw.retry is not None else None
            return None
        try:
            data = json.loads(raw.data) if raw.data else None
        except ValueError:
            return None
        if raw.event == "output" and isinstance(data, dict):
            seq = int(data.get("seq", 0))
            if seq <= self.last_seq:
                return None  # already handed out before a reconnect
            self.last_seq = seq
            self._progressed = True
            return OutputEvent(seq, str(data.get("stream", "stdout")), str(data.get("data", "")))
        if raw.event == "gap" and isinstance(data, dict):
            to_seq = int(data.get("to_seq", 0))
            if to_seq <= self.last_seq:
                return None
            self.last_seq = to_seq
            self._progressed = True
            return GapEvent(int(data.get("from_seq", 0)), to_seq)
        if raw.event == "status" and isinstance(data, dict):
            return StatusEvent(Command.from_json(data))
        if raw.event == "end" and isinstance(data, dict):
            self.done = True
            return EndEvent(Command.from_json(data))
        return None

    def next_delay(self, reason: str, retry_after: Optional[float] = None) -> float:
        """Seconds to wait before reconnecting; raises when the API has been
        silent for longer than ``give_up_after``."""
        from ._errors import APIConnectionError

        silent = time.monotonic() - self._alive
        if silent > self.give_up_after:
            raise APIConnectionError(
                f"gave up following the command: nothing from the API for "
                f"{self.give_up_after:.0f}s ({reason})"
            )
        if self._progressed or time.monotonic() - self._opened >= HEALTHY_CONNECTION:
            self._backoff = BACKOFF_MIN
        delay = max(self._backoff, self._server_retry or 0.0, retry_after or 0.0)
        self._server_retry = None
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self.reconnects += 1
        # Jitter, so many clients cut at once do not come back at once.
        return delay * (0.8 + 0.4 * random.random())
