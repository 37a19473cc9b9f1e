"""What each operation sends and how its answer is read, shared by the sync
and async clients (which only differ in how they send)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from ._models import ApiKey, AuditEntry, Command, Delivery, Page, Project, Secret, TestDelivery, Webhook

#: A shell command line (``str``, run by ``/bin/sh -c``) or an argv (a
#: sequence of strings, run without a shell).
CommandLine = Union[str, Sequence[str]]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Leaves a field of an update as it is (``None`` clears a nullable one).
UNSET: Any = _Unset()


@dataclass
class Req:
    method: str
    path: str
    parse: Callable[[Any], Any]
    params: dict[str, str] = field(default_factory=dict)
    json: Optional[Any] = None
    headers: dict[str, str] = field(default_factory=dict)
    #: A raw body (``application/octet-stream``), instead of ``json``.
    content: Optional[bytes] = None


def seg(s: str) -> str:
    """One path segment, escaped."""
    return quote(s, safe="")


def _query(**kw: Any) -> dict[str, str]:
    out = {}
    for k, v in kw.items():
        if v is None:
            continue
        out[k] = _iso(v) if isinstance(v, datetime) else str(v)
    return out


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _body(fields: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: _iso(v) for k, v in fields.items() if v is not UNSET}
    body.update(extra)
    return body


def _page(cls: Any) -> Callable[[Any], Page[Any]]:
    return lambda d: Page([cls.from_json(x) for x in d.get("items", [])], d.get("next_cursor"))


def no_body(_: Any) -> None:
    """The parser of operations that answer 204 No Content."""
    return None


# Projects


def project_create(name: str, fields: Mapping[str, Any], extra: Mapping[str, Any]) -> Req:
    body = _body({k: v for k, v in fields.items() if v is not None}, extra)
    body["name"] = name
    return Req("POST", "/v1/projects", Project.from_json, json=body)


def project_list(limit: Optional[int], cursor: Optional[str]) -> Req:
    return Req("GET", "/v1/projects", _page(Project), params=_query(limit=limit, cursor=cursor))


def project_get(name: str) -> Req:
    return Req("GET", f"/v1/projects/{seg(name)}", Project.from_json)


def project_update(name: str, fields: Mapping[str, Any], extra: Mapping[str, Any]) -> Req:
    return Req("PATCH", f"/v1/projects/{seg(name)}", Project.from_json, json=_body(fields, extra))


def project_delete(name: str) -> Req:
    return Req("DELETE", f"/v1/projects/{seg(name)}", no_body)


# Commands


def command_create(
    project: str,
    command: CommandLine,
    *,
    env: Optional[Mapping[str, str]],
    priority: Optional[int],
    timeout_s: Optional[int],
    stdin: Optional[str],
    idempotency_key: Optional[str],
    extra: Mapping[str, Any],
) -> Req:
    body: dict[str, Any] = {}
    if isinstance(command, str):
        body["command"] = command
    else:
        body["argv"] = list(command)
    for k, v in (("env", env), ("priority", priority), ("timeout_s", timeout_s), ("stdin", stdin)):
        if v is not None:
            body[k] = dict(v) if k == "env" else v
    body.update(extra)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Req(
        "POST", f"/v1/projects/{seg(project)}/commands", Command.from_json, json=body, headers=headers
    )


def command_get(id: str, wait: Optional[int] = None) -> Req:
    return Req("GET", f"/v1/commands/{seg(id)}", Command.from_json, params=_query(wait=wait))


def command_list(
    project: Optional[str], status: Optional[str], limit: Optional[int], cursor: Optional[str]
) -> Req:
    return Req(
        "GET",
        "/v1/commands",
        _page(Command),
        params=_query(project=project, status=status, limit=limit, cursor=cursor),
    )


def command_output(id: str, stream: Optional[str]) -> Req:
    return Req("GET", f"/v1/commands/{seg(id)}/output", bytes, params=_query(stream=stream))


def command_cancel(id: str) -> Req:
    return Req("POST", f"/v1/commands/{seg(id)}/cancel", Command.from_json)


def _seq(v: Any) -> int:
    return int(v["seq"])


def command_stdin(id: str, data: Union[bytes, str], eof: bool) -> Req:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    params = {"eof": "true"} if eof else {}
    return Req(
        "POST",
        f"/v1/commands/{seg(id)}/stdin",
        _seq,
        params=params,
        content=raw,
        headers={"Content-Type": "application/octet-stream"},
    )


def command_resize(id: str, cols: int, rows: int) -> Req:
    return Req("POST", f"/v1/commands/{seg(id)}/resize", _seq, json={"cols": cols, "rows": rows})


def command_signal(id: str, signal: str) -> Req:
    return Req("POST", f"/v1/commands/{seg(id)}/signal", _seq, json={"signal": signal})


def command_events_path(id: str) -> str:
    return f"/v1/commands/{seg(id)}/events"


# Webhooks


def webhook_create(
    url: str, events: Sequence[str], project: Optional[str], secret: Optional[str], extra: Mapping[str, Any]
) -> Req:
    body: dict[str, Any] = {"url": url, "events": list(events)}
    if project is not None:
        body["project"] = project
    if secret is not None:
        body["secret"] = secret
    body.update(extra)
    return Req("POST", "/v1/webhooks", Webhook.from_json, json=body)


def webhook_list(limit: Optional[int], cursor: Optional[str]) -> Req:
    return Req("GET", "/v1/webhooks", _page(Webhook), params=_query(limit=limit, cursor=cursor))


def webhook_get(id: str) -> Req:
    return Req("GET", f"/v1/webhooks/{seg(id)}", Webhook.from_json)


def webhook_update(id: str, fields: Mapping[str, Any], extra: Mapping[str, Any]) -> Req:
    return Req("PATCH", f"/v1/webhooks/{seg(id)}", Webhook.from_json, json=_body(fields, extra))


def webhook_delete(id: str) -> Req:
    return Req("DELETE", f"/v1/webhooks/{seg(id)}", no_body)


def webhook_rotate_secret(id: str) -> Req:
    return Req("POST", f"/v1/webhooks/{seg(id)}/rotate-secret", Webhook.from_json)


def webhook_test(id: str) -> Req:
    return Req("POST", f"/v1/webhooks/{seg(id)}/test", TestDelivery.from_json)


def webhook_deliveries(id: str, status: Optional[str], limit: Optional[int], cursor: Optional[str]) -> Req:
    return Req(
        "GET",
        f"/v1/webhooks/{seg(id)}/deliveries",
        _page(Delivery),
        params=_query(status=status, limit=limit, cursor=cursor),
    )


def webhook_redeliver(id: str, delivery_id: str) -> Req:
    return Req(
        "POST", f"/v1/webhooks/{seg(id)}/deliveries/{seg(delivery_id)}/redeliver", Delivery.from_json
    )


def webhook_recover(id: str, since: Union[datetime, str]) -> Req:
    return Req(
        "POST", f"/v1/webhooks/{seg(id)}/recover", lambda d: int(d["recovered"]), json={"since": _iso(since)}
    )


# API keys, whoami, audit


def key_create(name: str, scopes: Sequence[str], fields: Mapping[str, Any], extra: Mapping[str, Any]) -> Req:
    body = _body({k: v for k, v in fields.items() if v is not None}, extra)
    body.update(name=name, scopes=list(scopes))
    return Req("POST", "/v1/api-keys", ApiKey.from_json, json=body)


def key_list(limit: Optional[int], cursor: Optional[str]) -> Req:
    return Req("GET", "/v1/api-keys", _page(ApiKey), params=_query(limit=limit, cursor=cursor))


def key_get(id: str) -> Req:
    return Req("GET", f"/v1/api-keys/{seg(id)}", ApiKey.from_json)


def key_revoke(id: str) -> Req:
    return Req("DELETE", f"/v1/api-keys/{seg(id)}", no_body)


def key_rotate(id: str) -> Req:
    return Req("POST", f"/v1/api-keys/{seg(id)}/rotate", ApiKey.from_json)


def whoami() -> Req:
    return Req("GET", "/v1/whoami", ApiKey.from_json)


# Files


def _file_path(project: str, path: str) -> str:
    inner = "/".join(seg(p) for p in path.strip("/").split("/")) if path.strip("/") else ""
    return f"/v1/projects/{seg(project)}/files" + (f"/{inner}" if inner else "")


def file_upload(project: str, path: str, data: bytes) -> Req:
    return Req("PUT", _file_path(project, path), lambda d: d, content=data)


def file_download(project: str, path: str, range: Optional[str]) -> Req:
    headers = {"Range": range} if range else {}
    return Req("GET", _file_path(project, path), bytes, headers=headers)


def file_list(project: str, path: str, limit: Optional[int], cursor: Optional[str]) -> Req:
    params = {"list": "", **_query(limit=limit, cursor=cursor)}
    return Req("GET", _file_path(project, path), lambda d: d, params=params)


def file_archive_upload(project: str, data: bytes, path: Optional[str]) -> Req:
    return Req(
        "POST", f"/v1/projects/{seg(project)}/files:archive", lambda d: d, params=_query(path=path), content=data
    )


def file_archive_download(project: str, path: str) -> Req:
    inner = path.strip("/")
    if inner:
        return Req("GET", _file_path(project, inner) + ":archive", bytes)
    return Req("GET", f"/v1/projects/{seg(project)}/files:archive", bytes)


def file_delete(project: str, path: str) -> Req:
    return Req("DELETE", _file_path(project, path), no_body)


# Secrets


def secret_set(project: str, name: str, value: str) -> Req:
    return Req("PUT", f"/v1/projects/{seg(project)}/secrets/{seg(name)}", Secret.from_json, json={"value": value})


def secret_list(project: str, limit: Optional[int], cursor: Optional[str]) -> Req:
    return Req(
        "GET", f"/v1/projects/{seg(project)}/secrets", _page(Secret), params=_query(limit=limit, cursor=cursor)
    )


def secret_get(project: str, name: str) -> Req:
    return Req("GET", f"/v1/projects/{seg(project)}/secrets/{seg(name)}", Secret.from_json)


def secret_delete(project: str, name: str) -> Req:
    return Req("DELETE", f"/v1/projects/{seg(project)}/secrets/{seg(name)}", no_body)


def audit_list(filters: Mapping[str, Any]) -> Req:
    return Req("GET", "/v1/audit", _page(AuditEntry), params=_query(**filters))
