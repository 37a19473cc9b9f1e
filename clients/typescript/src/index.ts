/**
 * `@rdev/client`: run commands in rdev's development environments, follow
 * their output live, manage projects and webhooks, verify deliveries.
 *
 * ```ts
 * import { Client } from "@rdev/client";
 * const rdev = new Client("http://127.0.0.1:8080", process.env.RDEV_API_KEY);
 * const result = await rdev.commands.run("demo", "make test");
 * console.log(result.exitCode, result.stdout);
 * ```
 */

export {
  ApiKeys,
  Audit,
  Client,
  Commands,
  DEFAULT_URL,
  EventStream,
  Files,
  Projects,
  RunningCommand,
  Secrets,
  VERSION,
  Webhooks,
} from "./client.js";
export type { ClientOptions, CommandLine, CreateKey, FollowOptions, PageOptions, StartOptions } from "./client.js";
export {
  ApiConnectionError,
  ApiError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  RdevError,
  ServerError,
  ValidationError,
} from "./errors.js";
export type { FieldError } from "./errors.js";
export { SseParser } from "./sse.js";
export type * from "./types.js";
export { verifyWebhook, WebhookVerificationError } from "./webhooks.js";
export type { VerifyOptions, WebhookEvent } from "./webhooks.js";
