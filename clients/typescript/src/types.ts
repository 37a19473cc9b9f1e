/**
 * The API's JSON as TypeScript types. Objects are the parsed JSON as the
 * server sent it: fields a newer server adds are present at run time
 * (and allowed by the index signatures), never refused.
 */

/** `queued → running → succeeded | failed | timed_out | cancelled`. */
export type CommandStatus = "queued" | "running" | "succeeded" | "failed" | "timed_out" | "cancelled";

/** A command as the API shows it. */
export interface Command {
  id: string;
  project: string;
  status: CommandStatus | (string & {});
  /** Shell command line (run with `sh -c`); or `argv`. */
  command?: string | null;
  argv?: string[] | null;
  exit_code?: number | null;
  error?: string | null;
  /**
   * Why it ended (`exited`, `signaled`, `timed_out`, `cancelled`,
   * `memory_limit`, `pids_limit`, …); null until it ends, absent on
   * servers that predate it.
   */
  reason?: string | null;
  /** The signal that ended it, when `reason` is `signaled`. */
  signal?: number | null;
  priority: number;
  timeout_s: number;
  output_bytes: number;
  truncated: boolean;
  worker_id?: string | null;
  created_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  [field: string]: unknown;
}

/** A finished command and its output. */
export interface CommandResult {
  id: string;
  status: Command["status"];
  exitCode: number | null;
  reason: string | null;
  signal: number | null;
  error: string | null;
  /** Stored stdout decoded as UTF-8 (invalid bytes replaced). */
  stdout: string;
  stderr: string;
  /** The project's `max_output_bytes` cut the middle of the output. */
  truncated: boolean;
  /** `status === "succeeded"`. */
  ok: boolean;
  command: Command;
}

export interface Project {
  name: string;
  description: string;
  executor: { kind: string; [field: string]: unknown };
  env: Record<string, string>;
  default_timeout_s: number;
  max_output_bytes: number;
  max_concurrency?: number | null;
  allowed_commands?: string[] | null;
  created_at: string;
  updated_at: string;
  [field: string]: unknown;
}

export interface Webhook {
  id: string;
  url: string;
  events: string[];
  project?: string | null;
  enabled: boolean;
  disabled_reason?: string | null;
  failing_since?: string | null;
  /** Only in the answer that created the endpoint. */
  secret?: string | null;
  created_at: string;
  updated_at: string;
  [field: string]: unknown;
}

export interface DeliveryAttempt {
  at: string;
  status_code?: number | null;
  duration_ms: number;
  error?: string | null;
  response_excerpt?: string | null;
  [field: string]: unknown;
}

export interface Delivery {
  id: string;
  webhook_id: string;
  event_id: string;
  event_type: string;
  status: "pending" | "succeeded" | "failed" | "dead" | (string & {});
  next_attempt_at?: string | null;
  last_status_code?: number | null;
  last_error?: string | null;
  attempts: DeliveryAttempt[];
  created_at: string;
  updated_at: string;
  [field: string]: unknown;
}

export interface TestDelivery {
  event_id: string;
  delivery_id: string;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  projects?: string[] | null;
  allowed_ips?: string[] | null;
  rate_limit?: { requests: number; window_s: number } | null;
  expires_at?: string | null;
  revoked_at?: string | null;
  last_used_at?: string | null;
  created_at: string;
  /** Only in the create and rotate answers. */
  secret?: string | null;
  [field: string]: unknown;
}

export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  actor_key_id?: string | null;
  ip?: string | null;
  action: string;
  target_type: string;
  target_id?: string | null;
  project?: string | null;
  outcome: string;
  details: unknown;
  [field: string]: unknown;
}

/** One page of a list; pass `next_cursor` as `cursor` for the next (null on the last). */
/** A project secret as listed: never its value. */
export interface Secret {
  name: string;
  version: number;
  set_by: string;
  set_by_key_id?: string | null;
  set_at: string;
  created_at: string;
  [field: string]: unknown;
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

/** A chunk of output: `seq` numbers chunks 1, 2, 3… across both streams. */
export interface OutputEvent {
  type: "output";
  seq: number;
  stream: "stdout" | "stderr" | (string & {});
  /** UTF-8 text (invalid bytes replaced). */
  data: string;
}
/** Chunks `fromSeq`..`toSeq` were not kept (output truncation). */
export interface GapEvent {
  type: "gap";
  fromSeq: number;
  toSeq: number;
}
/** The command changed status (also sent first on every connection). */
export interface StatusEvent {
  type: "status";
  command: Command;
}
/** The command ended; always the last event. */
export interface EndEvent {
  type: "end";
  command: Command;
}
export type CommandEvent = OutputEvent | GapEvent | StatusEvent | EndEvent;
