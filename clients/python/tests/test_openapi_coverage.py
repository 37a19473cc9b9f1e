"""Every operation of the API's OpenAPI document is reachable from this
SDK, or listed in LEFT_OUT with the reason. The test calls each SDK method
against the live API and records the requests actually sent, so a method
that exists but calls the wrong route does not count."""

from __future__ import annotations

import inspect
import re
from datetime import datetime, timezone

import httpx
import pytest

import rdev

# Operations an SDK user has no use for, deliberately not wrapped.
LEFT_OUT = {
    ("GET", "/health"): "liveness probe for load balancers and orchestrators",
    ("GET", "/ready"): "readiness probe for load balancers and orchestrators",
    ("GET", "/debug/pprof/heap"): "heap profile for operators (pprof tooling)",
    ("GET", "/openapi.json"): "the API description itself; generators read it directly",
    ("GET", "/v1/commands/{id}/attach"): "a WebSocket for terminals; send_input/resize/signal and events() cover it over HTTP",
}

METHODS = ("get", "post", "put", "patch", "delete")


def operations(url: str) -> set[tuple[str, str]]:
    doc = httpx.get(f"{url}/openapi.json", timeout=30).json()
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in METHODS if m in item}


def template_of(path: str, templates: set[str]) -> str:
    for t in templates:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$"
        if re.match(pattern, path):
            return t
    raise AssertionError(f"the SDK called {path}, which the API does not document")


def test_every_operation_is_reachable_or_deliberately_left_out(url: str, api_key: str, project: str) -> None:
    sent: list[tuple[str, str]] = []
    http = httpx.Client(
        timeout=60, event_hooks={"request": [lambda req: sent.append((req.method, req.url.path))]}
    )
    with rdev.Client(url, api_key, http_client=http) as c:
        # Projects.
        name = f"{project}-cov"
        c.projects.create(name)
        c.projects.list(limit=1)
        c.projects.get(name)
        c.projects.update(name, description="covered")
        # Commands.
        ran = c.commands.run(project, "echo hi")  # create, events, output
        c.commands.get(ran.id)
        c.commands.list(project=project)
        slow = c.commands.start(project, "sleep 30")
        slow.cancel()
        # Input of an interactive command.
        term = c.commands.start(project, "cat", stdin="pipe", tty={"cols": 80, "rows": 24})
        c.commands.resize(term.id, 100, 30)
        c.commands.send_input(term.id, "hi\n")
        c.commands.signal(term.id, "TERM")
        piped = c.commands.start(project, "cat", stdin="pipe")
        c.commands.send_input(piped.id, b"bye\n", eof=True)
        assert piped.result().stdout == "bye\n"
        # Webhooks (the receiver need not exist: nothing waits for delivery).
        hook = c.webhooks.create("http://127.0.0.1:9/hook", ["command.succeeded"], project=project)
        c.webhooks.list()
        c.webhooks.get(hook.id)
        c.webhooks.update(hook.id, events=["*"])
        test = c.webhooks.test(hook.id)
        c.webhooks.deliveries(hook.id)
        c.webhooks.redeliver(hook.id, test.delivery_id)
        c.webhooks.recover(hook.id, datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert c.webhooks.rotate_secret(hook.id).secret
        c.webhooks.delete(hook.id)
        # Keys, whoami, audit.
        key = c.api_keys.create(f"{project}-key", ["commands:read"])
        c.api_keys.list()
        c.api_keys.get(key.id)
        c.api_keys.rotate(key.id)
        c.api_keys.revoke(key.id)
        c.whoami()
        c.audit.list(project=project, limit=5)
        c.projects.delete(name)

    documented = operations(url)
    templates = {p for _, p in documented}
    reached = {(m, template_of(p, templates)) for m, p in sent}
    stale = set(LEFT_OUT) - documented
    assert not stale, f"LEFT_OUT names operations the API no longer has: {sorted(stale)}"
    wrongly_left_out = set(LEFT_OUT) & reached
    assert not wrongly_left_out, f"reachable yet listed as left out: {sorted(wrongly_left_out)}"
    missing = documented - reached - set(LEFT_OUT)
    assert not missing, (
        f"operations of /openapi.json the SDK does not reach: {sorted(missing)}; "
        "add them to the SDK (sync and async) or to LEFT_OUT with the reason"
    )


def public_methods(obj: object) -> set[str]:
    return {n for n, _ in inspect.getmembers(obj, callable) if not n.startswith("_")}


@pytest.mark.parametrize("resource", ["projects", "commands", "webhooks", "api_keys", "audit"])
def test_async_client_has_the_sync_clients_surface(resource: str) -> None:
    sync = getattr(rdev.Client("http://x", "k"), resource)
    asyn = getattr(rdev.AsyncClient("http://x", "k"), resource)
    assert public_methods(sync) == public_methods(asyn)
    for name in public_methods(sync):
        s = inspect.signature(getattr(sync, name))
        a = inspect.signature(getattr(asyn, name))
        assert list(s.parameters) == list(a.parameters), name


def test_async_running_command_mirrors_the_sync_one() -> None:
    assert public_methods(rdev.RunningCommand) == public_methods(rdev.AsyncRunningCommand)
