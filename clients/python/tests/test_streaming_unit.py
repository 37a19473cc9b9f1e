"""The event-stream parser and the resume logic, against canned answers
(no server needed): a replayed chunk is never handed out twice."""

from __future__ import annotations

import json

import httpx

import rdev
from rdev._sse import SSEParser

CMD = {"id": "c1", "project": "p", "status": "running"}


def frame(event: str, data: object, id: str = "") -> bytes:
    head = f"id: {id}\n" if id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def out(seq: int) -> bytes:
    return frame("output", {"seq": seq, "stream": "stdout", "data": f"{seq}\n"}, str(seq))


def test_parser_handles_any_line_ending_split_anywhere() -> None:
    text = b": keep-alive\r\nevent: output\r\ndata: a\r\ndata: b\r\nid: 7\r\n\r\nevent: end\rdata: {}\r\r"
    for size in range(1, len(text) + 1):
        p = SSEParser()
        events = []
        for i in range(0, len(text), size):
            events.extend(p.feed(text[i : i + size]))
        assert [(e.event, e.data, e.id) for e in events] == [("output", "a\nb", "7"), ("end", "{}", "7")], size


def test_a_server_that_replays_chunks_after_a_reconnect_yields_each_once() -> None:
    seen_last_event_ids = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen_last_event_ids.append(request.headers.get("last-event-id"))
        if len(seen_last_event_ids) == 1:
            # Two chunks, then half of a third: the connection ends early.
            body = frame("status", CMD) + out(1) + out(2) + out(3)[:12]
        else:
            # A careless server replays from the start.
            end = {**CMD, "status": "succeeded", "exit_code": 0}
            body = frame("status", CMD) + out(1) + out(2) + out(3) + out(4) + frame("end", end)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with rdev.Client("http://rdev.test", "k", http_client=http) as client:
        stream = client.commands.events("c1")
        events = list(stream)
    assert [e.seq for e in events if isinstance(e, rdev.OutputEvent)] == [1, 2, 3, 4]
    assert seen_last_event_ids == [None, "2"]
    assert stream.reconnects == 1
    assert isinstance(events[-1], rdev.EndEvent) and events[-1].command.exit_code == 0


def test_a_refusal_is_raised_not_retried() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        problem = {"type": "urn:rdev:problem:not-found", "title": "Not Found", "status": 404, "detail": "no command c1"}
        return httpx.Response(404, headers={"content-type": "application/problem+json"}, json=problem)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with rdev.Client("http://rdev.test", "k", http_client=http) as client:
        try:
            list(client.commands.events("c1"))
        except rdev.NotFoundError as e:
            assert (e.status, e.detail) == (404, "no command c1")
        else:
            raise AssertionError("expected NotFoundError")
