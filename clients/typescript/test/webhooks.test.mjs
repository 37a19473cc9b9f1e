// Verifying webhook deliveries: the Standard Webhooks test vector, and a
// real delivery from a live rdev.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { verifyWebhook, WebhookVerificationError } from "../dist/index.js";
import { client, project } from "./helpers.mjs";

// The test vector of the Standard Webhooks specification.
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HEADERS = {
  "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
  "webhook-timestamp": "1614265330",
  "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
};
const BODY = '{"test": 2432232314}';
const AT = new Date(1614265330 * 1000);

test("the Standard Webhooks test vector verifies", async () => {
  const ev = await verifyWebhook(BODY, HEADERS, SECRET, { now: AT });
  assert.equal(ev.id, "msg_p5jXN8AQM9LWM0D4loKWxJek");
  // Bytes, a Headers object, any case, another signature listed first.
  const h = new Headers({ ...HEADERS, "Webhook-Signature": `v1,bm9wZQ== ${HEADERS["webhook-signature"]}` });
  await verifyWebhook(new TextEncoder().encode(BODY), h, SECRET, { now: new Date(AT.getTime() + 299_000) });
});

for (const [what, body, headers, now] of [
  ["a changed body", '{"test": 2432232315}', HEADERS, AT],
  ["another id", BODY, { ...HEADERS, "webhook-id": "msg_other" }, AT],
  ["a v2 signature", BODY, { ...HEADERS, "webhook-signature": HEADERS["webhook-signature"].replace("v1,", "v2,") }, AT],
  ["no signature", BODY, { "webhook-id": HEADERS["webhook-id"], "webhook-timestamp": HEADERS["webhook-timestamp"] }, AT],
  ["a replay 6 minutes later", BODY, HEADERS, new Date(AT.getTime() + 360_000)],
  ["a replay years later", BODY, HEADERS, undefined],
]) {
  test(`refused: ${what}`, async () => {
    await assert.rejects(verifyWebhook(body, headers, SECRET, { now }), WebhookVerificationError);
  });
}

test("a real delivery verifies with the endpoint's secret", async () => {
  const c = client();
  const p = await project(c);
  const received = [];
  let arrived;
  const got = new Promise((resolve) => (arrived = resolve));
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (d) => chunks.push(d));
    req.on("end", () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(204).end();
      arrived();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    const hook = await c.webhooks.create(url, ["command.failed"], { project: p });
    assert.match(hook.secret, /^whsec_/);
    assert.equal((await c.webhooks.get(hook.id)).secret ?? null, null); // shown once
    const r = await c.commands.run(p, "exit 4");
    await got;
    const { headers, body } = received[0];
    const ev = await verifyWebhook(new Uint8Array(body), headers, hook.secret);
    assert.equal(ev.type, "command.failed");
    assert.equal(ev.command.id, r.id);
    assert.equal(ev.command.exit_code, 4);
    const tampered = new Uint8Array(body);
    tampered[tampered.length - 2] ^= 1;
    await assert.rejects(verifyWebhook(tampered, headers, hook.secret), WebhookVerificationError);
    const deliveries = await c.webhooks.deliveries(hook.id);
    assert.ok(deliveries.items.some((d) => d.event_id === ev.id));
    await c.webhooks.delete(hook.id);
  } finally {
    server.close();
  }
});
