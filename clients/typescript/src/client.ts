/**
 * The client: `new Client(url, apiKey)` with `projects`, `commands`,
 * `webhooks`, `apiKeys`, `audit` and `secrets`. Runs on `fetch` (Node ≥ 18 and
 * browsers); no dependencies.
 */

import { ApiConnectionError, ApiError, errorFromResponse } from "./errors.js";
import { Follow, SseParser } from "./sse.js";
import type {
  ApiKey,
  AuditEntry,
  Command,
  CommandEvent,
  CommandResult,
  Delivery,
  OutputEvent,
  Page,
  Project,
  Secret,
  TestDelivery,
  Webhook,
} from "./types.js";

export const DEFAULT_URL = "http://127.0.0.1:8080";
export const VERSION = "0.1.0";
/** The API sends a keep-alive every 15 s: 45 s of silence is a dead connection. */
const STREAM_IDLE_MS = 45_000;
/** Attempts of an enqueue whose answer was lost (same Idempotency-Key). */
const CREATE_ATTEMPTS = 4;

export interface ClientOptions {
  /** A `fetch` to use instead of the global one (a proxy agent, a test double, …). */
  fetch?: typeof fetch;
  /** Limit of ordinary requests (default 60 s). Event streams have none. */
  timeoutMs?: number;
  /** Following a command gives up after this long without a byte from the API (default 120 s). */
  giveUpAfterMs?: number;
}

/** A shell command line (`string`, run by `/bin/sh -c`) or an argv (run without a shell). */
export type CommandLine = string | readonly string[];

export interface StartOptions {
  env?: Record<string, string>;
  priority?: number;
  timeout_s?: number;
  /**
   * `"closed"` (the default), `"pipe"` (send it later with
   * `commands.sendInput`), or any other string: the whole input, fixed.
   */
  stdin?: string;
  /** A pseudo-terminal of this size (stdout and stderr then merge; stdin defaults to `"pipe"`). */
  tty?: { cols: number; rows: number };
  /** Retrying with the same key returns the original command (default: a new key per call). */
  idempotencyKey?: string;
  /** Fields this client does not name yet, sent as they are. */
  extra?: Record<string, unknown>;
}

export interface FollowOptions {
  /** Called with each output chunk as it arrives. */
  onOutput?: (chunk: OutputEvent) => void | Promise<void>;
  /** Stops waiting (the command keeps running). */
  signal?: AbortSignal;
}

export interface PageOptions {
  limit?: number;
  cursor?: string;
}

type Query = Record<string, string | number | undefined | null>;

interface Req {
  query?: Query;
  body?: unknown;
  /** A raw body (`application/octet-stream`) instead of JSON. */
  bytes?: Uint8Array;
  headers?: Record<string, string>;
  read?: "json" | "bytes" | "none";
}

function env(name: string): string | undefined {
  const p = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return p?.env?.[name] || undefined;
}

function seg(s: string): string {
  return encodeURIComponent(s);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  const id = c?.randomUUID ? c.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `rdev-ts-${id}`;
}

/** A client of the rdev API. `url` and `apiKey` default to `RDEV_URL` / `RDEV_API_KEY` (Node). */
export class Client {
  readonly baseUrl: string;
  readonly projects: Projects;
  readonly commands: Commands;
  readonly webhooks: Webhooks;
  readonly apiKeys: ApiKeys;
  readonly audit: Audit;
  readonly secrets: Secrets;
  readonly files: Files;
  /** @internal */
  readonly giveUpAfterMs: number;
  #apiKey: string | undefined;
  #fetch: typeof fetch;
  #timeoutMs: number;

  constructor(url?: string, apiKey?: string, options: ClientOptions = {}) {
    this.baseUrl = (url ?? env("RDEV_URL") ?? DEFAULT_URL).replace(/\/+$/, "");
    this.#apiKey = apiKey ?? env("RDEV_API_KEY");
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#timeoutMs = options.timeoutMs ?? 60_000;
    this.giveUpAfterMs = options.giveUpAfterMs ?? 120_000;
    this.projects = new Projects(this);
    this.commands = new Commands(this);
    this.webhooks = new Webhooks(this);
    this.apiKeys = new ApiKeys(this);
    this.audit = new Audit(this);
    this.secrets = new Secrets(this);
    this.files = new Files(this);
  }

  /** The calling key (its scopes and projects; never its secret). */
  whoami(): Promise<ApiKey> {
    return this.request("GET", "/v1/whoami");
  }

  /** @internal */
  headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...extra };
    if (this.#apiKey) h.authorization = `Bearer ${this.#apiKey}`;
    return h;
  }

  /** @internal */
  url(path: string, query?: Query): string {
    const u = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  /** @internal Sends through the configured fetch; network failures become ApiConnectionError. */
  async send(method: string, url: string, init: RequestInit & { timeoutMs?: number | null } = {}): Promise<Response> {
    const ctrl = new AbortController();
    const outer = init.signal;
    const onAbort = () => ctrl.abort(outer?.reason);
    outer?.addEventListener("abort", onAbort, { once: true });
    const limit = init.timeoutMs === undefined ? this.#timeoutMs : init.timeoutMs;
    const timer = limit === null ? undefined : setTimeout(() => ctrl.abort(new Error("timed out")), limit);
    try {
      return await this.#fetch(url, { ...init, method, signal: ctrl.signal });
    } catch (e) {
      if (outer?.aborted) throw e;
      throw new ApiConnectionError(`${method} ${url}: ${describe(e)}`, { cause: e });
    } finally {
      if (timer !== undefined && init.timeoutMs !== null) clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
  }

  /** @internal */
  async request<T>(method: string, path: string, req: Req = {}): Promise<T> {
    const headers = this.headers(req.headers);
    let body: BodyInit | undefined;
    if (req.bytes !== undefined) {
      headers["content-type"] = "application/octet-stream";
      // A copy backed by a plain ArrayBuffer, which every fetch accepts.
      body = new Uint8Array(req.bytes);
    } else if (req.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(req.body);
    }
    const url = this.url(path, req.query);
    const resp = await this.send(method, url, { headers, body });
    if (!resp.ok) throw await errorFromResponse(resp);
    try {
      if (req.read === "bytes") return new Uint8Array(await resp.arrayBuffer()) as T;
      const text = await resp.text();
      if (req.read === "none" || resp.status === 204 || text === "") return undefined as T;
      return JSON.parse(text) as T;
    } catch (e) {
      throw new ApiConnectionError(`${method} ${url}: unreadable answer: ${describe(e)}`, { cause: e });
    }
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}

/** `/v1/projects`. */
export class Projects {
  constructor(readonly client: Client) {}

  /** Creates a project; `executor` defaults to the server's (`{kind: "local"}`). */
  create(
    name: string,
    fields: Partial<Omit<Project, "name" | "created_at" | "updated_at">> & Record<string, unknown> = {},
  ): Promise<Project> {
    return this.client.request("POST", "/v1/projects", { body: { ...fields, name } });
  }

  list(opts: PageOptions = {}): Promise<Page<Project>> {
    return this.client.request("GET", "/v1/projects", { query: { ...opts } });
  }

  get(name: string): Promise<Project> {
    return this.client.request("GET", `/v1/projects/${seg(name)}`);
  }

  /** Changes the fields given; `null` clears `max_concurrency` / `allowed_commands`. */
  update(name: string, fields: Record<string, unknown>): Promise<Project> {
    return this.client.request("PATCH", `/v1/projects/${seg(name)}`, { body: fields });
  }

  async delete(name: string): Promise<void> {
    await this.client.request("DELETE", `/v1/projects/${seg(name)}`, { read: "none" });
  }
}

/** Commands: run, start and follow, inspect, cancel. */
export class Commands {
  constructor(readonly client: Client) {}

  /**
   * Enqueues a command and returns at once. Every attempt carries the same
   * `Idempotency-Key`, so when an answer is lost (a broken connection, 429,
   * 502-504) the request is retried without ever running the command twice.
   */
  async start(project: string, command: CommandLine, opts: StartOptions = {}): Promise<RunningCommand> {
    const body: Record<string, unknown> = typeof command === "string" ? { command } : { argv: [...command] };
    for (const k of ["env", "priority", "timeout_s", "stdin", "tty"] as const) {
      if (opts[k] !== undefined) body[k] = opts[k];
    }
    Object.assign(body, opts.extra);
    const headers = { "idempotency-key": opts.idempotencyKey ?? newIdempotencyKey() };
    let delay = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        const cmd = await this.client.request<Command>("POST", `/v1/projects/${seg(project)}/commands`, {
          body,
          headers,
        });
        return new RunningCommand(this, cmd);
      } catch (e) {
        if (attempt >= CREATE_ATTEMPTS || !retryCreate(e)) throw e;
        const after = e instanceof ApiError ? (e.retryAfter ?? 0) * 1000 : 0;
        await sleep(Math.max(delay, after));
        delay *= 2;
      }
    }
  }

  /**
   * Runs a command to its end: exit code, status, reason, stdout, stderr.
   * A non-zero exit is a result, not an error.
   */
  async run(project: string, command: CommandLine, opts: StartOptions & FollowOptions = {}): Promise<CommandResult> {
    const started = await this.start(project, command, opts);
    return started.result(opts);
  }

  /**
   * The command; with `wait` (seconds, at most 50), once it has ended or
   * the wait has passed, whichever comes first: check `status`.
   */
  get(id: string, opts: { wait?: number } = {}): Promise<Command> {
    return this.client.request("GET", `/v1/commands/${seg(id)}`, { query: { ...opts } });
  }

  /** Commands, newest first. */
  list(opts: PageOptions & { project?: string; status?: string } = {}): Promise<Page<Command>> {
    return this.client.request("GET", "/v1/commands", { query: { ...opts } });
  }

  /** The stored output, raw bytes (one stream, or both interleaved). */
  output(id: string, opts: { stream?: "stdout" | "stderr" } = {}): Promise<Uint8Array> {
    return this.client.request("GET", `/v1/commands/${seg(id)}/output`, { query: { ...opts }, read: "bytes" });
  }

  /** Asks to cancel; 409 (ConflictError) when it had ended. */
  cancel(id: string): Promise<Command> {
    return this.client.request("POST", `/v1/commands/${seg(id)}/cancel`);
  }

  /**
   * Sends bytes (a string is UTF-8 encoded) to the standard input or
   * terminal of a command started with `stdin: "pipe"` or a `tty`; `eof`
   * closes it after them (on a terminal: Ctrl-D). Applied in order, once.
   * Resolves to the event's `seq`; 409 (ConflictError) once it has ended.
   */
  async sendInput(id: string, data: Uint8Array | string = "", opts: { eof?: boolean } = {}): Promise<number> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const query = opts.eof ? { eof: "true" } : undefined;
    const r = await this.client.request<{ seq: number }>("POST", `/v1/commands/${seg(id)}/stdin`, { bytes, query });
    return r.seq;
  }

  /** Sets the terminal size of a command started with a `tty`. */
  async resize(id: string, cols: number, rows: number): Promise<number> {
    const r = await this.client.request<{ seq: number }>("POST", `/v1/commands/${seg(id)}/resize`, {
      body: { cols, rows },
    });
    return r.seq;
  }

  /**
   * Sends `INT`, `TERM`, `HUP`, `QUIT`, `KILL`, `USR1` or `USR2`: with a tty
   * to its foreground process group (like a key), else to the command's
   * process group.
   */
  async signal(id: string, signal: "INT" | "TERM" | "HUP" | "QUIT" | "KILL" | "USR1" | "USR2"): Promise<number> {
    const r = await this.client.request<{ seq: number }>("POST", `/v1/commands/${seg(id)}/signal`, {
      body: { signal },
    });
    return r.seq;
  }

  /**
   * The command's live events (output after `afterSeq`, gaps, status
   * changes, a final `end`), resuming across dropped connections.
   */
  events(id: string, opts: { afterSeq?: number; signal?: AbortSignal } = {}): EventStream {
    return new EventStream(this.client, id, opts.afterSeq ?? 0, opts.signal);
  }

  /** Follows the command until it ends; returns the final command. */
  async wait(id: string, opts: FollowOptions = {}): Promise<Command> {
    let final: Command | undefined;
    for await (const ev of this.events(id, { signal: opts.signal })) {
      if (ev.type === "output") await opts.onOutput?.(ev);
      else if (ev.type === "end") final = ev.command;
    }
    if (!final) throw new ApiConnectionError("the event stream ended without an end event");
    return final;
  }

  /** Waits for the end, then reads the stored stdout and stderr whole. */
  async result(id: string, opts: FollowOptions = {}): Promise<CommandResult> {
    const command = await this.wait(id, opts);
    const [out, err] = await Promise.all([
      this.output(id, { stream: "stdout" }),
      this.output(id, { stream: "stderr" }),
    ]);
    const text = (b: Uint8Array) => new TextDecoder("utf-8").decode(b);
    return {
      id: command.id,
      status: command.status,
      exitCode: command.exit_code ?? null,
      reason: command.reason ?? null,
      signal: command.signal ?? null,
      error: command.error ?? null,
      stdout: text(out),
      stderr: text(err),
      truncated: command.truncated,
      ok: command.status === "succeeded",
      command,
    };
  }
}

function retryCreate(e: unknown): boolean {
  if (e instanceof ApiError) return [429, 502, 503, 504].includes(e.status);
  // A refused connection means the API is down: say so at once.
  return e instanceof ApiConnectionError && !/ECONNREFUSED/.test(describe((e as { cause?: unknown }).cause));
}

/** A command that was started: follow, wait for or cancel it. */
export class RunningCommand {
  constructor(
    readonly commands: Commands,
    /** The command as the enqueue answered it (usually `queued`). */
    readonly command: Command,
  ) {}

  get id(): string {
    return this.command.id;
  }

  events(opts: { afterSeq?: number; signal?: AbortSignal } = {}): EventStream {
    return this.commands.events(this.id, opts);
  }

  /** Only the output chunks, live, in order, each once. */
  async *output(opts: { signal?: AbortSignal } = {}): AsyncGenerator<OutputEvent> {
    for await (const ev of this.events(opts)) {
      if (ev.type === "output") yield ev;
    }
  }

  wait(opts: FollowOptions = {}): Promise<Command> {
    return this.commands.wait(this.id, opts);
  }

  result(opts: FollowOptions = {}): Promise<CommandResult> {
    return this.commands.result(this.id, opts);
  }

  cancel(): Promise<Command> {
    return this.commands.cancel(this.id);
  }
}

/**
 * A command's events until its end. After a dropped connection it
 * reconnects (backing off 0.2 s to 5 s) with `Last-Event-ID` and skips any
 * chunk at or below the last `seq` handed out: nothing lost or repeated.
 * Gives up (ApiConnectionError) after `giveUpAfterMs` without a byte.
 * Iterate it once; `break` closes the connection.
 */
export class EventStream implements AsyncIterable<CommandEvent> {
  /** The final command, once the end event was read. */
  final: Command | undefined;
  #follow: Follow;

  constructor(
    readonly client: Client,
    readonly id: string,
    afterSeq: number,
    readonly signal?: AbortSignal,
  ) {
    this.#follow = new Follow(afterSeq, client.giveUpAfterMs);
  }

  /** Reconnects so far. */
  get reconnects(): number {
    return this.#follow.reconnects;
  }

  /** The last `seq` handed out. */
  get lastSeq(): number {
    return this.#follow.lastSeq;
  }

  [Symbol.asyncIterator](): AsyncGenerator<CommandEvent> {
    return this.#run();
  }

  async *#run(): AsyncGenerator<CommandEvent> {
    const f = this.#follow;
    const url = this.client.url(`/v1/commands/${seg(this.id)}/events`);
    for (;;) {
      let reason = "the stream ended early";
      let retryAfterMs: number | undefined;
      const ctrl = new AbortController();
      const onAbort = () => ctrl.abort(this.signal?.reason);
      this.signal?.addEventListener("abort", onAbort, { once: true });
      let idle: ReturnType<typeof setTimeout> | undefined;
      const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(() => ctrl.abort(new Error(`no data or keep-alive for ${STREAM_IDLE_MS / 1000}s`)), STREAM_IDLE_MS);
      };
      try {
        arm();
        const resp = await this.client.send("GET", url, {
          headers: this.client.headers(f.headers()),
          signal: ctrl.signal,
          timeoutMs: null,
        });
        if (!resp.ok) {
          const err = await errorFromResponse(resp);
          if (!err.retryable) throw err;
          reason = err.message;
          retryAfterMs = err.retryAfter !== undefined ? err.retryAfter * 1000 : undefined;
        } else if (resp.body) {
          f.opened();
          const parser = new SseParser();
          const reader = resp.body.getReader();
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            f.touch();
            arm();
            for (const raw of parser.feed(value)) {
              const ev = f.onEvent(raw);
              if (!ev) continue;
              if (ev.type === "end") this.final = ev.command;
              yield ev;
              if (f.done) return;
            }
          }
        }
      } catch (e) {
        if (e instanceof ApiError || this.signal?.aborted) throw e;
        reason = describe(e);
      } finally {
        clearTimeout(idle);
        ctrl.abort(); // closes the connection, also when the consumer stopped early
        this.signal?.removeEventListener("abort", onAbort);
      }
      const delay = f.nextDelay(retryAfterMs);
      if (delay === undefined) {
        throw new ApiConnectionError(
          `gave up following command ${this.id}: nothing from the API for ${f.giveUpAfterMs / 1000}s (${reason})`,
        );
      }
      await sleep(delay, this.signal);
    }
  }
}

/** `/v1/webhooks`: endpoints, deliveries, redelivery. */
export class Webhooks {
  constructor(readonly client: Client) {}

  /** Creates an endpoint; the answer's `secret` (`whsec_…`) is shown only here. */
  create(
    url: string,
    events: string[],
    opts: { project?: string; secret?: string; extra?: Record<string, unknown> } = {},
  ): Promise<Webhook> {
    const body: Record<string, unknown> = { url, events, ...opts.extra };
    if (opts.project !== undefined) body.project = opts.project;
    if (opts.secret !== undefined) body.secret = opts.secret;
    return this.client.request("POST", "/v1/webhooks", { body });
  }

  list(opts: PageOptions = {}): Promise<Page<Webhook>> {
    return this.client.request("GET", "/v1/webhooks", { query: { ...opts } });
  }

  get(id: string): Promise<Webhook> {
    return this.client.request("GET", `/v1/webhooks/${seg(id)}`);
  }

  /** Changes the fields given; `project: null` removes the filter. */
  update(
    id: string,
    fields: { url?: string; events?: string[]; project?: string | null; enabled?: boolean; [k: string]: unknown },
  ): Promise<Webhook> {
    return this.client.request("PATCH", `/v1/webhooks/${seg(id)}`, { body: fields });
  }

  async delete(id: string): Promise<void> {
    await this.client.request("DELETE", `/v1/webhooks/${seg(id)}`, { read: "none" });
  }

  /**
   * Gives the endpoint a new signing secret (in `secret`, shown only here);
   * deliveries are signed with both the old and the new one for the
   * server's overlap period.
   */
  rotateSecret(id: string): Promise<Webhook> {
    return this.client.request("POST", `/v1/webhooks/${seg(id)}/rotate-secret`);
  }

  /** Sends a `webhook.test` event to this endpoint. */
  test(id: string): Promise<TestDelivery> {
    return this.client.request("POST", `/v1/webhooks/${seg(id)}/test`);
  }

  /** Deliveries with their attempts, newest first. */
  deliveries(id: string, opts: PageOptions & { status?: string } = {}): Promise<Page<Delivery>> {
    return this.client.request("GET", `/v1/webhooks/${seg(id)}/deliveries`, { query: { ...opts } });
  }

  /** One new attempt now. */
  redeliver(id: string, deliveryId: string): Promise<Delivery> {
    return this.client.request("POST", `/v1/webhooks/${seg(id)}/deliveries/${seg(deliveryId)}/redeliver`);
  }

  /** Puts failed/dead deliveries created since `since` back to pending; returns how many. */
  async recover(id: string, since: Date | string): Promise<number> {
    const body = { since: since instanceof Date ? since.toISOString() : since };
    const r = await this.client.request<{ recovered: number }>("POST", `/v1/webhooks/${seg(id)}/recover`, { body });
    return r.recovered;
  }
}

export interface CreateKey {
  projects?: string[];
  allowed_ips?: string[];
  rate_limit?: { requests: number; window_s: number };
  expires_at?: string;
  [field: string]: unknown;
}

/** `/v1/api-keys`. */
export class ApiKeys {
  constructor(readonly client: Client) {}

  /** Creates a key; its `secret` is shown only in this answer. */
  create(name: string, scopes: string[], fields: CreateKey = {}): Promise<ApiKey> {
    return this.client.request("POST", "/v1/api-keys", { body: { ...fields, name, scopes } });
  }

  list(opts: PageOptions = {}): Promise<Page<ApiKey>> {
    return this.client.request("GET", "/v1/api-keys", { query: { ...opts } });
  }

  get(id: string): Promise<ApiKey> {
    return this.client.request("GET", `/v1/api-keys/${seg(id)}`);
  }

  async revoke(id: string): Promise<void> {
    await this.client.request("DELETE", `/v1/api-keys/${seg(id)}`, { read: "none" });
  }

  /** A new secret for the same key; the old one stops working. */
  rotate(id: string): Promise<ApiKey> {
    return this.client.request("POST", `/v1/api-keys/${seg(id)}/rotate`);
  }
}

function filePath(project: string, path: string): string {
  const inner = path
    .split("/")
    .filter((p) => p !== "")
    .map(seg)
    .join("/");
  return `/v1/projects/${seg(project)}/files${inner ? `/${inner}` : ""}`;
}

/** `/v1/projects/{name}/files`: a local project's files. */
export class Files {
  constructor(readonly client: Client) {}

  /** Writes `data` to `path` (parents created); the file's entry. */
  upload(project: string, path: string, data: Uint8Array): Promise<Record<string, unknown>> {
    return this.client.request("PUT", filePath(project, path), { bytes: data });
  }

  /** The file's bytes (`range`: an HTTP `bytes=` range). */
  download(project: string, path: string, opts: { range?: string } = {}): Promise<Uint8Array> {
    const headers: Record<string, string> = opts.range ? { range: opts.range } : {};
    return this.client.request("GET", filePath(project, path), { headers, read: "bytes" });
  }

  /** A page of a directory's entries (`items`, `next_cursor`). */
  list(project: string, path = "", opts: PageOptions = {}): Promise<Page<Record<string, unknown>>> {
    return this.client.request("GET", filePath(project, path), { query: { list: "", ...opts } });
  }

  async delete(project: string, path: string): Promise<void> {
    await this.client.request("DELETE", filePath(project, path), { read: "none" });
  }

  /** Extracts a tar (or tar.gz) into the project directory (or `opts.path`). */
  uploadArchive(project: string, data: Uint8Array, opts: { path?: string } = {}): Promise<Record<string, unknown>> {
    return this.client.request("POST", `/v1/projects/${seg(project)}/files:archive`, {
      bytes: data,
      query: { path: opts.path },
    });
  }

  /** A directory (default the project directory) as tar.gz bytes. */
  downloadArchive(project: string, path = ""): Promise<Uint8Array> {
    return this.client.request("GET", `${filePath(project, path)}:archive`, { read: "bytes" });
  }
}

/**
 * `/v1/projects/{name}/secrets`: write-only values given to the commands that
 * name them (`secrets`, `secret_files` of a command) and redacted from their
 * output.
 */
export class Secrets {
  constructor(readonly client: Client) {}

  /** Sets a secret (a new version); the value is never returned. */
  set(project: string, name: string, value: string): Promise<Secret> {
    return this.client.request("PUT", `/v1/projects/${seg(project)}/secrets/${seg(name)}`, { body: { value } });
  }

  /** Names, versions, who set them and when. */
  list(project: string, opts: PageOptions = {}): Promise<Page<Secret>> {
    return this.client.request("GET", `/v1/projects/${seg(project)}/secrets`, { query: { ...opts } });
  }

  get(project: string, name: string): Promise<Secret> {
    return this.client.request("GET", `/v1/projects/${seg(project)}/secrets/${seg(name)}`);
  }

  async delete(project: string, name: string): Promise<void> {
    await this.client.request("DELETE", `/v1/projects/${seg(project)}/secrets/${seg(name)}`, { read: "none" });
  }
}

/** `/v1/audit`. */
export class Audit {
  constructor(readonly client: Client) {}

  /** Audit entries, newest first. */
  list(
    filters: PageOptions & { actor?: string; action?: string; project?: string; since?: string; until?: string } = {},
  ): Promise<Page<AuditEntry>> {
    return this.client.request("GET", "/v1/audit", { query: { ...filters } });
  }
}
