// Running, following and cancelling commands against a live rdev.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, ConflictError } from "../dist/index.js";
import { LINES, SCRIPT, WANT_ERR, WANT_OUT, client, live, project } from "./helpers.mjs";

test("run returns exit code, status and both streams", async () => {
  const c = client();
  const p = await project(c);
  const r = await c.commands.run(p, "echo out; echo err >&2");
  assert.equal(r.status, "succeeded");
  assert.equal(r.exitCode, 0);
  assert.equal(r.ok, true);
  assert.ok(r.reason === null || r.reason === "exited", `reason ${r.reason}`);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
  assert.equal((await c.commands.get(r.id)).status, "succeeded");
});

test("get with wait answers when the command ends", async () => {
  const c = client();
  const started = await c.commands.start(await project(c), "sleep 0.5; echo done");
  const ended = await c.commands.get(started.id, { wait: 50 });
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.exit_code, 0);
  assert.equal(ended.output_bytes, 5);
});

test("an argv runs without a shell", async () => {
  const c = client();
  const r = await c.commands.run(await project(c), ["printf", "%s|", "a b", "$HOME"]);
  assert.equal(r.stdout, "a b|$HOME|");
});

test("a non-zero exit is a result, not an exception", async () => {
  const c = client();
  const r = await c.commands.run(await project(c), "echo partial; exit 3");
  assert.equal(r.status, "failed");
  assert.equal(r.exitCode, 3);
  assert.equal(r.ok, false);
  assert.equal(r.stdout, "partial\n");
});

test("live output arrives in order, each chunk once", async () => {
  const c = client();
  const seen = [];
  const r = await c.commands.run(await project(c), SCRIPT, { onOutput: (ev) => void seen.push(ev) });
  const seqs = seen.map((e) => e.seq);
  assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b));
  assert.equal(seen.filter((e) => e.stream === "stdout").map((e) => e.data).join(""), WANT_OUT);
  assert.equal(seen.filter((e) => e.stream === "stderr").map((e) => e.data).join(""), WANT_ERR);
  assert.equal(r.stdout, WANT_OUT);
});

test("the stream survives forced disconnects without loss or duplicates", async () => {
  const c = client();
  const { flakyUrl, apiKey } = live();
  const started = await c.commands.start(await project(c), SCRIPT);
  const stream = new Client(flakyUrl, apiKey).commands.events(started.id);
  const events = [];
  for await (const ev of stream) events.push(ev);
  const outputs = events.filter((e) => e.type === "output");
  // Nothing lost: seq runs 1, 2, 3… without a hole; nothing repeated.
  assert.deepEqual(
    outputs.map((e) => e.seq),
    outputs.map((_, i) => i + 1),
  );
  assert.equal(outputs.filter((e) => e.stream === "stdout").map((e) => e.data).join(""), WANT_OUT);
  assert.equal(outputs.filter((e) => e.stream === "stderr").map((e) => e.data).join(""), WANT_ERR);
  assert.ok(stream.reconnects >= 2, `the proxy should have cut the stream several times (${stream.reconnects})`);
  assert.equal(events.at(-1).type, "end");
  assert.equal(stream.final.status, "succeeded");
  assert.ok(outputs.length >= LINES, "each line its own chunk, or close");
});

test("resuming after a seq skips what was seen", async () => {
  const c = client();
  const r = await c.commands.run(await project(c), "for i in 1 2 3 4; do echo $i; sleep 0.05; done");
  const seqs = [];
  for await (const ev of c.commands.events(r.id, { afterSeq: 2 })) if (ev.type === "output") seqs.push(ev.seq);
  assert.ok(seqs.length > 0 && Math.min(...seqs) === 3, `${seqs}`);
});

test("cancel stops a running command", async () => {
  const c = client();
  const started = await c.commands.start(await project(c), "echo started; sleep 30");
  let final;
  for await (const ev of started.events()) {
    if (ev.type === "output" && ev.data === "started\n") await started.cancel();
    if (ev.type === "end") final = ev.command;
  }
  assert.equal(final.status, "cancelled");
  assert.ok(final.reason == null || final.reason === "cancelled", `reason ${final.reason}`);
  await assert.rejects(started.cancel(), (e) => e instanceof ConflictError && e.status === 409);
});

test("stored output is raw bytes", async () => {
  const c = client();
  const p = await project(c);
  const r = await c.commands.run(p, "printf 'a\\377b'");
  assert.deepEqual([...(await c.commands.output(r.id))], [0x61, 0xff, 0x62]);
  assert.equal(r.stdout, "a\ufffdb");
  const page = await c.commands.list({ project: p, limit: 1 });
  assert.deepEqual(
    page.items.map((x) => x.id),
    [r.id],
  );
});

test("a piped command answers each line as it is sent; input after the end is refused", async () => {
  const c = client();
  const p = await project(c);
  const started = await c.commands.start(p, 'while read l; do echo "got $l"; done', { stdin: "pipe" });
  let seen = "";
  const events = started.events()[Symbol.asyncIterator]();
  for (const n of [1, 2]) {
    await c.commands.sendInput(started.id, `line ${n}\n`);
    // The answer to line n arrives before line n+1 is sent.
    while (!seen.includes(`got line ${n}\n`)) {
      const { value, done } = await events.next();
      assert.ok(!done, "the stream ended early");
      if (value.type === "output") seen += value.data;
    }
  }
  await c.commands.sendInput(started.id, "", { eof: true });
  const r = await started.result();
  assert.deepEqual([r.status, r.stdout], ["succeeded", "got line 1\ngot line 2\n"]);
  await assert.rejects(c.commands.sendInput(started.id, "late\n"), ConflictError);
});

test("a signal ends a command", async () => {
  const c = client();
  const p = await project(c);
  const started = await c.commands.start(p, "sleep 60", { stdin: "pipe" });
  await c.commands.signal(started.id, "INT");
  const final = await started.wait();
  assert.deepEqual([final.reason, final.signal], ["signaled", 2]);
});
