// The live stack these tests run against is started by the Rust test
// tests/tests/clients.rs (`cargo test -p rdev-tests --test clients`), which
// passes RDEV_TEST_URL (the API), RDEV_TEST_FLAKY_URL (the API behind a
// proxy that cuts every event stream mid-event) and RDEV_TEST_API_KEY (an
// admin key).

import { randomUUID } from "node:crypto";

import { Client } from "../dist/index.js";

function need(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(
      `${name} is not set: these tests run against a live rdev started by ` +
        "`cargo test -p rdev-tests --test clients`",
    );
  }
  return v;
}

export const live = () => ({
  url: need("RDEV_TEST_URL"),
  flakyUrl: need("RDEV_TEST_FLAKY_URL"),
  apiKey: need("RDEV_TEST_API_KEY"),
});

export function client() {
  const { url, apiKey } = live();
  return new Client(url, apiKey);
}

/** A fresh project (local executor) for one test. */
export async function project(c) {
  const name = `ts-${randomUUID().slice(0, 12)}`;
  await c.projects.create(name, { executor: { kind: "local", workdir: name } });
  return name;
}

export const LINES = 60;
// Lines on stdout and stderr, 20 ms apart, so each is a chunk of its own:
// the proxy of RDEV_TEST_FLAKY_URL cuts streams several times on the way.
export const SCRIPT = `for i in $(seq 1 ${LINES}); do echo "out $i"; echo "err $i" >&2; sleep 0.02; done; printf end`;
export const WANT_OUT = Array.from({ length: LINES }, (_, i) => `out ${i + 1}\n`).join("") + "end";
export const WANT_ERR = Array.from({ length: LINES }, (_, i) => `err ${i + 1}\n`).join("");
