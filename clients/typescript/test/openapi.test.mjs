// Every operation of the API's OpenAPI document is reachable from this SDK,
// or listed in LEFT_OUT with the reason. Each SDK method is called against
// the live API through a recording fetch, so a method that exists but calls
// the wrong route does not count.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../dist/index.js";
import { live, project } from "./helpers.mjs";

// Operations an SDK user has no use for, deliberately not wrapped.
const LEFT_OUT = {
  "GET /health": "liveness probe for load balancers and orchestrators",
  "GET /ready": "readiness probe for load balancers and orchestrators",
  "GET /debug/pprof/heap": "heap profile for operators (pprof tooling)",
  "GET /openapi.json": "the API description itself; generators read it directly",
  "GET /v1/commands/{id}/attach": "a WebSocket for terminals; sendInput/resize/signal and events() cover it over HTTP",
};

const METHODS = ["get", "post", "put", "patch", "delete"];

test("every operation is reachable or deliberately left out", async () => {
  const { url, apiKey } = live();
  const doc = await (await fetch(`${url}/openapi.json`)).json();
  const documented = new Set();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) if (item[m]) documented.add(`${m.toUpperCase()} ${path}`);
  }
  const templates = [...new Set([...documented].map((op) => op.split(" ")[1]))].map((t) => ({
    t,
    re: new RegExp(`^${t.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+")}$`),
  }));
  const reached = new Set();
  const recording = async (input, init) => {
    const path = new URL(input).pathname;
    const t = templates.find(({ re }) => re.test(path));
    assert.ok(t, `the SDK called ${path}, which the API does not document`);
    reached.add(`${init.method} ${t.t}`);
    return fetch(input, init);
  };
  const c = new Client(url, apiKey, { fetch: recording });
  const p = await project(new Client(url, apiKey));

  // Projects.
  const name = `${p}-cov`;
  await c.projects.create(name);
  await c.projects.list({ limit: 1 });
  await c.projects.get(name);
  await c.projects.update(name, { description: "covered" });
  // Commands.
  const ran = await c.commands.run(p, "echo hi"); // create, events, output
  await c.commands.get(ran.id);
  await c.commands.list({ project: p });
  const slow = await c.commands.start(p, "sleep 30");
  await slow.cancel();
  // Input of an interactive command.
  const term = await c.commands.start(p, "cat", { tty: { cols: 80, rows: 24 } });
  await c.commands.resize(term.id, 100, 30);
  await c.commands.sendInput(term.id, "hi\n");
  await c.commands.signal(term.id, "TERM");
  const piped = await c.commands.start(p, "cat", { stdin: "pipe" });
  await c.commands.sendInput(piped.id, new TextEncoder().encode("bye\n"), { eof: true });
  assert.equal((await piped.result()).stdout, "bye\n");
  // Webhooks (the receiver need not exist: nothing waits for delivery).
  const hook = await c.webhooks.create("http://127.0.0.1:9/hook", ["command.succeeded"], { project: p });
  await c.webhooks.list();
  await c.webhooks.get(hook.id);
  await c.webhooks.update(hook.id, { events: ["*"] });
  const t = await c.webhooks.test(hook.id);
  await c.webhooks.deliveries(hook.id);
  await c.webhooks.redeliver(hook.id, t.delivery_id);
  await c.webhooks.recover(hook.id, new Date("2026-01-01T00:00:00Z"));
  assert.ok((await c.webhooks.rotateSecret(hook.id)).secret);
  await c.webhooks.delete(hook.id);
  // Keys, whoami, audit.
  const key = await c.apiKeys.create(`${p}-key`, ["commands:read"]);
  await c.apiKeys.list();
  await c.apiKeys.get(key.id);
  await c.apiKeys.rotate(key.id);
  await c.apiKeys.revoke(key.id);
  await c.whoami();
  await c.audit.list({ project: p, limit: 5 });
  await c.projects.delete(name);

  const left = Object.keys(LEFT_OUT);
  const stale = left.filter((op) => !documented.has(op));
  assert.deepEqual(stale, [], "LEFT_OUT names operations the API no longer has");
  const wronglyLeftOut = left.filter((op) => reached.has(op));
  assert.deepEqual(wronglyLeftOut, [], "reachable yet listed as left out");
  const missing = [...documented].filter((op) => !reached.has(op) && !left.includes(op)).sort();
  assert.deepEqual(
    missing,
    [],
    "operations of /openapi.json the SDK does not reach: add them to the SDK or to LEFT_OUT with the reason",
  );
});
