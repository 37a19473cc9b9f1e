/**
 * Errors: every problem+json answer becomes an {@link ApiError} (a subclass
 * per common status), transport failures an {@link ApiConnectionError}. A
 * command that exits non-zero is not an error: it is a result.
 */

/** One invalid field of a 422 answer. */
export interface FieldError {
  field: string;
  message: string;
}

/** Base of every error this package throws. */
export class RdevError extends Error {
  override name = "RdevError";
}

/** No answer: the API could not be reached, or the connection broke. */
export class ApiConnectionError extends RdevError {
  override name = "ApiConnectionError";
}

/** An error answer (RFC 9457 problem+json). */
export class ApiError extends RdevError {
  override name = "ApiError";
  readonly status: number;
  readonly title: string;
  readonly detail: string;
  readonly type: string;
  /** Field errors of a validation failure (422). */
  readonly errors: FieldError[];
  /** The problem document as parsed (`{}` when the answer was not JSON). */
  readonly body: Record<string, unknown>;
  readonly headers: Headers;

  constructor(init: {
    status: number;
    title: string;
    detail: string;
    type?: string;
    errors?: FieldError[];
    body?: Record<string, unknown>;
    headers?: Headers;
  }) {
    const errors = init.errors ?? [];
    const head = `${init.title} (${init.status})`;
    super(
      errors.length > 0
        ? head + errors.map((e) => `\n  ${e.field}: ${e.message}`).join("")
        : init.detail
          ? `${head}: ${init.detail}`
          : head,
    );
    this.status = init.status;
    this.title = init.title;
    this.detail = init.detail;
    this.type = init.type ?? "about:blank";
    this.errors = errors;
    this.body = init.body ?? {};
    this.headers = init.headers ?? new Headers();
  }

  /** Whether the same request may succeed later (429, 5xx). */
  get retryable(): boolean {
    return this.status === 429 || this.status >= 500;
  }

  /** Seconds to wait, from `Retry-After`, when the server sent it. */
  get retryAfter(): number | undefined {
    const v = Number(this.headers.get("retry-after"));
    return this.headers.has("retry-after") && Number.isFinite(v) ? v : undefined;
  }
}

/** 400: malformed request. */
export class BadRequestError extends ApiError {
  override name = "BadRequestError";
}
/** 401: no key, unknown, revoked or expired key. */
export class AuthenticationError extends ApiError {
  override name = "AuthenticationError";
}
/** 403: the key lacks the scope, the address is not allowed, or the project's policy refuses the command. */
export class PermissionDeniedError extends ApiError {
  override name = "PermissionDeniedError";
}
/** 404: no such resource, or not visible to the key. */
export class NotFoundError extends ApiError {
  override name = "NotFoundError";
}
/** 409: e.g. a name already taken, or cancelling a finished command. */
export class ConflictError extends ApiError {
  override name = "ConflictError";
}
/** 422: well-formed but invalid; `errors` names each field. */
export class ValidationError extends ApiError {
  override name = "ValidationError";
}
/** 429: the key's rate limit is spent (or too many event streams). */
export class RateLimitError extends ApiError {
  override name = "RateLimitError";
}
/** 5xx. */
export class ServerError extends ApiError {
  override name = "ServerError";
}

const BY_STATUS: Record<number, typeof ApiError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  409: ConflictError,
  422: ValidationError,
  429: RateLimitError,
};

/** The {@link ApiError} for an error answer; tolerates bodies that are not problem+json. */
export async function errorFromResponse(resp: Response): Promise<ApiError> {
  const text = await resp.text().catch(() => "");
  let doc: Record<string, unknown> = {};
  try {
    const parsed: unknown = text ? JSON.parse(text) : {};
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
      doc = parsed as Record<string, unknown>;
    }
  } catch {
    // not JSON: keep the start of the text as the detail
  }
  const title = typeof doc.title === "string" ? doc.title : resp.statusText || "error";
  const detail =
    typeof doc.detail === "string" ? doc.detail : Object.keys(doc).length ? "" : text.slice(0, 500).trim();
  const errors = Array.isArray(doc.errors)
    ? doc.errors
        .filter((e): e is Record<string, unknown> => !!e && typeof e === "object")
        .map((e) => ({ field: String(e.field ?? ""), message: String(e.message ?? "") }))
    : [];
  const Cls = BY_STATUS[resp.status] ?? (resp.status >= 500 ? ServerError : ApiError);
  return new Cls({
    status: resp.status,
    title,
    detail,
    type: typeof doc.type === "string" ? doc.type : undefined,
    errors,
    body: doc,
    headers: resp.headers,
  });
}
