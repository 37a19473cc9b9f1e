/**
 * Verifying rdev's webhook deliveries (the Standard Webhooks scheme) with
 * WebCrypto: HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`
 * keyed with the base64 part of the `whsec_` secret, checked against each
 * `v1,` entry of `webhook-signature` by `crypto.subtle.verify` (constant
 * time), and a timestamp within the tolerance.
 */

import { RdevError } from "./errors.js";
import type { Command } from "./types.js";

/** The delivery is not authentic, or its timestamp is outside the tolerance. */
export class WebhookVerificationError extends RdevError {
  override name = "WebhookVerificationError";
}

/** A verified event. `command` is `data` for `command.*` events. */
export interface WebhookEvent {
  id: string;
  type: string;
  timestamp: string | undefined;
  data: Record<string, unknown>;
  command: Command | undefined;
}

export interface VerifyOptions {
  /** Largest accepted distance between `webhook-timestamp` and now (default 300 s). */
  toleranceSeconds?: number;
  /** "Now", for tests (default: the current time). */
  now?: Date;
}

async function subtle(): Promise<SubtleCrypto> {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.subtle) return c.subtle;
  // Node 18 has WebCrypto, but not on globalThis.
  const mod = (await import("node:" + "crypto")) as { webcrypto: Crypto };
  return mod.webcrypto.subtle;
}

function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function header(headers: Headers | Record<string, string | string[] | undefined>, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() === name) return Array.isArray(v) ? v.join(" ") : v;
  }
  return undefined;
}

/**
 * Checks a delivery and returns its event. `payload` is the raw request
 * body (as received: never re-serialised JSON), `headers` the request's
 * headers (a `Headers` or a plain object, any case), `secret` the
 * endpoint's `whsec_…` secret. Throws {@link WebhookVerificationError}.
 */
export async function verifyWebhook(
  payload: string | Uint8Array,
  headers: Headers | Record<string, string | string[] | undefined>,
  secret: string,
  options: VerifyOptions = {},
): Promise<WebhookEvent> {
  const id = header(headers, "webhook-id");
  const ts = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !ts || !signatures) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  }
  if (!/^\d+$/.test(ts)) throw new WebhookVerificationError(`bad webhook-timestamp ${JSON.stringify(ts)}`);
  const now = (options.now ?? new Date()).getTime() / 1000;
  if (Math.abs(now - Number(ts)) > (options.toleranceSeconds ?? 300)) {
    throw new WebhookVerificationError("webhook-timestamp is too old or too far in the future");
  }
  let key: Uint8Array;
  try {
    key = base64ToBytes(secret.startsWith("whsec_") ? secret.slice(6) : secret);
  } catch {
    throw new WebhookVerificationError("unusable secret: not base64");
  }
  if (key.length === 0) throw new WebhookVerificationError("unusable secret: empty");
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  const prefix = new TextEncoder().encode(`${id}.${ts}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix);
  signed.set(body, prefix.length);
  const crypto = await subtle();
  const hmacKey = await crypto.importKey("raw", key as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, [
    "verify",
  ]);
  let ok = false;
  for (const entry of signatures.split(" ")) {
    const comma = entry.indexOf(",");
    if (comma < 0 || entry.slice(0, comma) !== "v1") continue;
    let sig: Uint8Array;
    try {
      sig = base64ToBytes(entry.slice(comma + 1));
    } catch {
      continue;
    }
    if (await crypto.verify("HMAC", hmacKey, sig as BufferSource, signed as BufferSource)) {
      ok = true;
      break;
    }
  }
  if (!ok) throw new WebhookVerificationError("no matching signature");
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(new TextDecoder().decode(body)) as Record<string, unknown>;
  } catch {
    throw new WebhookVerificationError("the payload is not JSON");
  }
  const data =
    doc.data && typeof doc.data === "object" && !Array.isArray(doc.data) ? (doc.data as Record<string, unknown>) : {};
  const type = String(doc.type ?? "");
  return {
    id: String(doc.id ?? id),
    type,
    timestamp: typeof doc.timestamp === "string" ? doc.timestamp : undefined,
    data,
    command: type.startsWith("command.") && "id" in data ? (data as Command) : undefined,
  };
}
