// problem+json answers become errors with status, title, detail and field errors.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApiConnectionError,
  ApiError,
  AuthenticationError,
  Client,
  NotFoundError,
  ValidationError,
} from "../dist/index.js";
import { client, live, project } from "./helpers.mjs";

test("a validation failure names each field", async () => {
  const c = client();
  const err = await c.projects.create("Not A Valid Name").catch((e) => e);
  assert.ok(err instanceof ValidationError, String(err));
  assert.equal(err.status, 422);
  assert.equal(err.title, "Validation Failed");
  assert.ok(err.detail);
  assert.match(err.type, /^urn:rdev:problem:/);
  assert.deepEqual(
    err.errors.map((e) => e.field),
    ["name"],
  );
  assert.match(err.message, /name:/);

  const bad = await c.commands.start(await project(c), "true", { priority: 42 }).catch((e) => e);
  assert.ok(bad instanceof ValidationError);
  assert.ok(bad.errors.some((e) => e.field === "priority"));
});

test("statuses map to error classes", async () => {
  const c = client();
  const nf = await c.projects.get("no-such-project").catch((e) => e);
  assert.ok(nf instanceof NotFoundError && nf instanceof ApiError);
  assert.equal(nf.status, 404);
  const unauth = await new Client(live().url, "rdev_" + "x".repeat(43)).projects.list().catch((e) => e);
  assert.ok(unauth instanceof AuthenticationError);
  assert.equal(unauth.status, 401);
});

test("an unreachable API is a connection error", async () => {
  const err = await new Client("http://127.0.0.1:9", "k").projects.list().catch((e) => e);
  assert.ok(err instanceof ApiConnectionError, String(err));
});
