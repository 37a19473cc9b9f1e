// The event-stream parser and the resume logic, against canned answers (no
// server needed): a replayed chunk is never handed out twice.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, NotFoundError, SseParser } from "../dist/index.js";

const enc = new TextEncoder();
const CMD = { id: "c1", project: "p", status: "running" };
const frame = (event, data, id = "") => `${id ? `id: ${id}\n` : ""}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
const out = (seq) => frame("output", { seq, stream: "stdout", data: `${seq}\n` }, String(seq));

test("the parser handles any line ending, split anywhere", () => {
  const text = enc.encode(": keep-alive\r\nevent: output\r\ndata: a\r\ndata: b\r\nid: 7\r\n\r\nevent: end\rdata: {}\r\r");
  for (let size = 1; size <= text.length; size++) {
    const p = new SseParser();
    const events = [];
    for (let i = 0; i < text.length; i += size) events.push(...p.feed(text.slice(i, i + size)));
    assert.deepEqual(
      events.map((e) => [e.event, e.data, e.id]),
      [
        ["output", "a\nb", "7"],
        ["end", "{}", "7"],
      ],
      `size ${size}`,
    );
  }
});

test("a multi-byte character split between reads decodes whole", () => {
  const bytes = enc.encode('event: output\ndata: {"seq":1,"stream":"stdout","data":"é"}\n\n');
  const p = new SseParser();
  const at = bytes.indexOf(0xc3) + 1;
  const events = [...p.feed(bytes.slice(0, at)), ...p.feed(bytes.slice(at))];
  assert.equal(JSON.parse(events[0].data).data, "é");
});

test("a server that replays chunks after a reconnect yields each once", async () => {
  const lastEventIds = [];
  const fakeFetch = async (_url, init) => {
    lastEventIds.push(new Headers(init.headers).get("last-event-id"));
    const body =
      lastEventIds.length === 1
        ? // Two chunks, then half of a third: the connection ends early.
          frame("status", CMD) + out(1) + out(2) + out(3).slice(0, 12)
        : // A careless server replays from the start.
          frame("status", CMD) + out(1) + out(2) + out(3) + out(4) + frame("end", { ...CMD, status: "succeeded", exit_code: 0 });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  const c = new Client("http://rdev.test", "k", { fetch: fakeFetch });
  const stream = c.commands.events("c1");
  const events = [];
  for await (const ev of stream) events.push(ev);
  assert.deepEqual(
    events.filter((e) => e.type === "output").map((e) => e.seq),
    [1, 2, 3, 4],
  );
  assert.deepEqual(lastEventIds, [null, "2"]);
  assert.equal(stream.reconnects, 1);
  assert.equal(events.at(-1).type, "end");
  assert.equal(events.at(-1).command.exit_code, 0);
});

test("a refusal is thrown, not retried", async () => {
  let calls = 0;
  const fakeFetch = async () => {
    calls++;
    const problem = { type: "urn:rdev:problem:not-found", title: "Not Found", status: 404, detail: "no command c1" };
    return new Response(JSON.stringify(problem), { status: 404, headers: { "content-type": "application/problem+json" } });
  };
  const c = new Client("http://rdev.test", "k", { fetch: fakeFetch });
  await assert.rejects(
    async () => {
      for await (const _ of c.commands.events("c1"));
    },
    (e) => e instanceof NotFoundError && e.detail === "no command c1",
  );
  assert.equal(calls, 1);
});

test("unknown response fields are kept", async () => {
  const cmd = { id: "x", project: "p", status: "failed", exit_code: 137, reason: "memory_limit", signal: 9, later: { n: 1 } };
  const c = new Client("http://rdev.test", "k", { fetch: async () => Response.json(cmd) });
  const got = await c.commands.get("x");
  assert.equal(got.reason, "memory_limit");
  assert.equal(got.signal, 9);
  assert.deepEqual(got.later, { n: 1 });
});
