"""The asyncio client: the same surface as :mod:`rdev._sync`, awaited."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Sequence, Union

import httpx

from . import _requests as r
from ._base import (
    CREATE_ATTEMPTS,
    DEFAULT_TIMEOUT,
    STREAM_TIMEOUT,
    BaseClient,
    problem_from,
    read_answer,
    retry_create,
    transport_error,
    with_idempotency_key,
)
from ._errors import APIConnectionError, APIError
from ._models import (
    ApiKey,
    AuditEntry,
    Command,
    CommandResult,
    Delivery,
    EndEvent,
    Event,
    OutputEvent,
    Page,
    Project,
    Secret,
    TestDelivery,
    Webhook,
)
from ._requests import UNSET, CommandLine
from ._sse import Follow, SSEParser


class AsyncClient(BaseClient):
    """An asyncio client of the rdev API (see :class:`rdev.Client`).

    ``url`` and ``api_key`` default to ``RDEV_URL`` / ``RDEV_API_KEY``.
    Resources: :attr:`projects`, :attr:`commands`, :attr:`webhooks`,
    :attr:`api_keys`, :attr:`audit`, :attr:`secrets`. Use it as an async context manager, or
    await :meth:`aclose`."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: Union[float, httpx.Timeout] = DEFAULT_TIMEOUT,
        give_up_after: float = 120.0,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, api_key, give_up_after)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self.projects = Projects(self)
        self.commands = Commands(self)
        self.webhooks = Webhooks(self)
        self.api_keys = ApiKeys(self)
        self.audit = Audit(self)
        self.secrets = Secrets(self)
        self.files = Files(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def whoami(self) -> ApiKey:
        """The calling key (its scopes and projects; never its secret)."""
        return self._send(r.whoami())

    async def _send(self, req: r.Req) -> Any:
        try:
            resp = await self._http.request(
                req.method,
                self._url(req.path),
                params=req.params or None,
                json=req.json,
                content=req.content,
                headers=self._headers_for(req),
            )
        except httpx.HTTPError as e:
            raise transport_error(req, e) from e
        return read_answer(req, resp)


class Projects:
    """``/v1/projects``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        name: str,
        *,
        description: Optional[str] = None,
        executor: Optional[Mapping[str, Any]] = None,
        env: Optional[Mapping[str, str]] = None,
        default_timeout_s: Optional[int] = None,
        max_output_bytes: Optional[int] = None,
        max_concurrency: Optional[int] = None,
        allowed_commands: Optional[Sequence[str]] = None,
        **extra: Any,
    ) -> Project:
        """Creates a project. ``executor`` defaults to the server's
        (``{"kind": "local"}``); ``extra`` passes fields this client does not
        name yet."""
        fields = dict(
            description=description,
            executor=executor,
            env=env,
            default_timeout_s=default_timeout_s,
            max_output_bytes=max_output_bytes,
            max_concurrency=max_concurrency,
            allowed_commands=allowed_commands,
        )
        return await self._c._send(r.project_create(name, fields, extra))

    async def list(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[Project]:
        return await self._c._send(r.project_list(limit, cursor))

    async def get(self, name: str) -> Project:
        return await self._c._send(r.project_get(name))

    async def update(
        self,
        name: str,
        *,
        description: Any = UNSET,
        executor: Any = UNSET,
        env: Any = UNSET,
        default_timeout_s: Any = UNSET,
        max_output_bytes: Any = UNSET,
        max_concurrency: Any = UNSET,
        allowed_commands: Any = UNSET,
        **extra: Any,
    ) -> Project:
        """Changes the fields given; ``None`` clears ``max_concurrency`` /
        ``allowed_commands``."""
        fields = dict(
            description=description,
            executor=executor,
            env=env,
            default_timeout_s=default_timeout_s,
            max_output_bytes=max_output_bytes,
            max_concurrency=max_concurrency,
            allowed_commands=allowed_commands,
        )
        return await self._c._send(r.project_update(name, fields, extra))

    async def delete(self, name: str) -> None:
        await self._c._send(r.project_delete(name))


class Commands:
    """Commands: run, start and follow, inspect, cancel."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def start(
        self,
        project: str,
        command: CommandLine,
        *,
        env: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        timeout_s: Optional[int] = None,
        stdin: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        **extra: Any,
    ) -> "AsyncRunningCommand":
        """Enqueues a command and returns at once. ``command`` is a shell
        command line (``str``) or an argv (a list, run without a shell).

        Every attempt carries the same ``Idempotency-Key`` (yours, or one
        made up), so when an answer is lost (a broken connection, 429,
        502-504) the request is retried without ever running the command
        twice."""
        req = with_idempotency_key(
            r.command_create(
                project,
                command,
                env=env,
                priority=priority,
                timeout_s=timeout_s,
                stdin=stdin,
                idempotency_key=idempotency_key,
                extra=extra,
            )
        )
        delay = 0.5
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return AsyncRunningCommand(self, await self._c._send(req))
            except (APIConnectionError, APIError) as e:
                if attempt == CREATE_ATTEMPTS or not retry_create(e):
                    raise
                await asyncio.sleep(max(delay, getattr(e, "retry_after", None) or 0.0))
                delay *= 2
        raise AssertionError("unreachable")

    async def run(
        self,
        project: str,
        command: CommandLine,
        *,
        env: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        timeout_s: Optional[int] = None,
        stdin: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        on_output: Optional[Callable[[OutputEvent], Union[None, Awaitable[None]]]] = None,
        **extra: Any,
    ) -> CommandResult:
        """Runs a command to its end and returns its result: ``exit_code``,
        ``status``, ``reason``, ``stdout``, ``stderr``. A non-zero exit is a
        result, not an exception. ``on_output`` sees each chunk live."""
        started = await self.start(
            project,
            command,
            env=env,
            priority=priority,
            timeout_s=timeout_s,
            stdin=stdin,
            idempotency_key=idempotency_key,
            **extra,
        )
        return await started.result(on_output=on_output)

    async def get(self, id: str, *, wait: Optional[int] = None) -> Command:
        """The command; with ``wait`` (seconds, at most 50), once it has
        ended or the wait has passed, whichever comes first: check
        ``status``."""
        return await self._c._send(r.command_get(id, wait))

    async def list(
        self,
        *,
        project: Optional[str] = None,
        status: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Page[Command]:
        """Commands, newest first."""
        return await self._c._send(r.command_list(project, status, limit, cursor))

    async def output(self, id: str, *, stream: Optional[str] = None) -> bytes:
        """The stored output, raw bytes (``stream``: ``"stdout"``/``"stderr"``;
        both interleaved when ``None``)."""
        return await self._c._send(r.command_output(id, stream))

    async def cancel(self, id: str) -> Command:
        """Asks to cancel; a queued command is cancelled at once, a running
        one shortly after (follow it to see the end). 409 when it had ended."""
        return await self._c._send(r.command_cancel(id))

    async def send_input(self, id: str, data: Union[bytes, str] = b"", *, eof: bool = False) -> int:
        """Sends bytes to the standard input (or terminal) of a command
        started with ``stdin="pipe"`` or a ``tty``; ``eof=True`` closes it
        after them (on a terminal: Ctrl-D). Input is applied in order, once.
        Returns the event's ``seq``; 409 once the command has ended."""
        return await self._c._send(r.command_stdin(id, data, eof))

    async def resize(self, id: str, cols: int, rows: int) -> int:
        """Sets the terminal size of a command started with a ``tty``."""
        return await self._c._send(r.command_resize(id, cols, rows))

    async def signal(self, id: str, signal: str) -> int:
        """Sends ``INT``, ``TERM``, ``HUP``, ``QUIT``, ``KILL``, ``USR1`` or
        ``USR2``: with a tty to its foreground process group (like a key),
        else to the command's process group."""
        return await self._c._send(r.command_signal(id, signal))

    def events(self, id: str, *, after_seq: int = 0) -> "AsyncEventStream":
        """The command's live events (output chunks after ``after_seq``,
        gaps, status changes, and a final :class:`EndEvent`), resuming
        across dropped connections."""
        return AsyncEventStream(self._c, id, after_seq)

    async def wait(self, id: str, *, on_output: Optional[Callable[[OutputEvent], Union[None, Awaitable[None]]]] = None) -> Command:
        """Follows the command until it ends; returns the final command."""
        final: Optional[Command] = None
        async for ev in self.events(id):
            if isinstance(ev, OutputEvent) and on_output is not None:
                done = on_output(ev)
                if done is not None:
                    await done
            elif isinstance(ev, EndEvent):
                final = ev.command
        # Iterated to its natural end (the stream stops right after `end`),
        # so the connection is closed here, not by the garbage collector.
        if final is None:
            raise APIConnectionError("the event stream ended without an end event")
        return final

    async def result(
        self, id: str, *, on_output: Optional[Callable[[OutputEvent], Union[None, Awaitable[None]]]] = None
    ) -> CommandResult:
        """Waits for the end, then reads the stored stdout and stderr (whole
        bytes, so characters split between chunks decode correctly)."""
        final = await self.wait(id, on_output=on_output)
        out = (await self.output(id, stream="stdout")).decode("utf-8", "replace")
        err = (await self.output(id, stream="stderr")).decode("utf-8", "replace")
        return CommandResult(final, out, err)


class AsyncRunningCommand:
    """A command that was started: follow, wait for or cancel it."""

    def __init__(self, commands: Commands, command: Command) -> None:
        self._commands = commands
        #: The command as the API answered the enqueue (usually ``queued``).
        self.command = command

    @property
    def id(self) -> str:
        return self.command.id

    def __repr__(self) -> str:
        return f"AsyncRunningCommand({self.id!r})"

    def events(self, *, after_seq: int = 0) -> "AsyncEventStream":
        return self._commands.events(self.id, after_seq=after_seq)

    async def output(self) -> AsyncIterator[OutputEvent]:
        """Only the output chunks, live, in order, each once."""
        async for ev in self.events():
            if isinstance(ev, OutputEvent):
                yield ev

    async def wait(self, *, on_output: Optional[Callable[[OutputEvent], Union[None, Awaitable[None]]]] = None) -> Command:
        return await self._commands.wait(self.id, on_output=on_output)

    async def result(self, *, on_output: Optional[Callable[[OutputEvent], Union[None, Awaitable[None]]]] = None) -> CommandResult:
        return await self._commands.result(self.id, on_output=on_output)

    async def cancel(self) -> Command:
        return await self._commands.cancel(self.id)


class AsyncEventStream:
    """Iterates a command's events until its end. After a dropped connection
    it reconnects (backing off 0.2 s to 5 s) with ``Last-Event-ID`` and skips
    any chunk at or below the last ``seq`` handed out: no chunk is lost or
    repeated. Gives up (``APIConnectionError``) after ``give_up_after``
    seconds without a byte from the API. ``reconnects`` counts reconnects."""

    def __init__(self, client: AsyncClient, id: str, after_seq: int) -> None:
        self.id = id
        self._c = client
        self._follow = Follow(after_seq, client.give_up_after)
        self._gen = self._run()
        #: The final command, once the end event was read.
        self.final: Optional[Command] = None

    @property
    def reconnects(self) -> int:
        return self._follow.reconnects

    @property
    def last_seq(self) -> int:
        return self._follow.last_seq

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Event:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Closes the connection (when you stop before the end)."""
        await self._gen.aclose()

    async def __aenter__(self) -> "AsyncEventStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _run(self) -> AsyncIterator[Event]:
        f = self._follow
        url = self._c._url(r.command_events_path(self.id))
        while True:
            retry_after: Optional[float] = None
            try:
                headers = {**self._c._headers, **f.headers()}
                async with self._c._http.stream("GET", url, headers=headers, timeout=STREAM_TIMEOUT) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        err = problem_from(resp)
                        if not err.retryable:
                            raise err
                        reason = str(err)
                        retry_after = getattr(err, "retry_after", None)
                    else:
                        f.opened()
                        parser = SSEParser()
                        async for chunk in resp.aiter_bytes():
                            f.touch()
                            for raw in parser.feed(chunk):
                                ev = f.on_event(raw)
                                if ev is None:
                                    continue
                                if isinstance(ev, EndEvent):
                                    self.final = ev.command
                                yield ev
                                if f.done:
                                    return
                        reason = "the stream ended early"
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            await asyncio.sleep(f.next_delay(reason, retry_after))


class Webhooks:
    """``/v1/webhooks``: endpoints, deliveries, redelivery."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        url: str,
        events: Sequence[str],
        *,
        project: Optional[str] = None,
        secret: Optional[str] = None,
        **extra: Any,
    ) -> Webhook:
        """Creates an endpoint; the answer's ``secret`` (``whsec_…``) is shown
        only here: keep it to verify deliveries."""
        return await self._c._send(r.webhook_create(url, events, project, secret, extra))

    async def list(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[Webhook]:
        return await self._c._send(r.webhook_list(limit, cursor))

    async def get(self, id: str) -> Webhook:
        return await self._c._send(r.webhook_get(id))

    async def update(
        self,
        id: str,
        *,
        url: Any = UNSET,
        events: Any = UNSET,
        project: Any = UNSET,
        enabled: Any = UNSET,
        **extra: Any,
    ) -> Webhook:
        """Changes the fields given; ``project=None`` removes the filter."""
        fields = dict(url=url, events=events, project=project, enabled=enabled)
        return await self._c._send(r.webhook_update(id, fields, extra))

    async def delete(self, id: str) -> None:
        await self._c._send(r.webhook_delete(id))

    async def rotate_secret(self, id: str) -> Webhook:
        """Gives the endpoint a new signing secret (in ``secret``, shown only
        here); deliveries are signed with both the old and the new one for the
        server's overlap period."""
        return await self._c._send(r.webhook_rotate_secret(id))

    async def test(self, id: str) -> TestDelivery:
        """Sends a ``webhook.test`` event to this endpoint."""
        return await self._c._send(r.webhook_test(id))

    async def deliveries(
        self,
        id: str,
        *,
        status: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Page[Delivery]:
        """Deliveries with their attempts, newest first."""
        return await self._c._send(r.webhook_deliveries(id, status, limit, cursor))

    async def redeliver(self, id: str, delivery_id: str) -> Delivery:
        """One new attempt now."""
        return await self._c._send(r.webhook_redeliver(id, delivery_id))

    async def recover(self, id: str, since: Union[datetime, str]) -> int:
        """Puts failed/dead deliveries created since ``since`` back to
        pending; returns how many."""
        return await self._c._send(r.webhook_recover(id, since))


class ApiKeys:
    """``/v1/api-keys``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        projects: Optional[Sequence[str]] = None,
        allowed_ips: Optional[Sequence[str]] = None,
        rate_limit: Optional[Mapping[str, int]] = None,
        expires_at: Optional[Union[datetime, str]] = None,
        **extra: Any,
    ) -> ApiKey:
        """Creates a key; its ``secret`` is shown only in this answer."""
        fields = dict(projects=projects, allowed_ips=allowed_ips, rate_limit=rate_limit, expires_at=expires_at)
        return await self._c._send(r.key_create(name, scopes, fields, extra))

    async def list(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[ApiKey]:
        return await self._c._send(r.key_list(limit, cursor))

    async def get(self, id: str) -> ApiKey:
        return await self._c._send(r.key_get(id))

    async def revoke(self, id: str) -> None:
        await self._c._send(r.key_revoke(id))

    async def rotate(self, id: str) -> ApiKey:
        """A new secret for the same key; the old one stops working."""
        return await self._c._send(r.key_rotate(id))


class Files:
    """``/v1/projects/{name}/files``: a local project's files."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def upload(self, project: str, path: str, data: bytes) -> dict[str, Any]:
        """Writes ``data`` to ``path`` (parents created); the file's entry."""
        return await self._c._send(r.file_upload(project, path, data))

    async def download(self, project: str, path: str, *, range: Optional[str] = None) -> bytes:
        """The file's bytes (``range``: an HTTP ``bytes=`` range)."""
        return await self._c._send(r.file_download(project, path, range))

    async def list(
        self, project: str, path: str = "", *, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> dict[str, Any]:
        """A page of a directory's entries (``items``, ``next_cursor``)."""
        return await self._c._send(r.file_list(project, path, limit, cursor))

    async def delete(self, project: str, path: str) -> None:
        await self._c._send(r.file_delete(project, path))

    async def upload_archive(self, project: str, data: bytes, *, path: Optional[str] = None) -> dict[str, Any]:
        """Extracts a tar (or tar.gz) into the project directory (or ``path``)."""
        return await self._c._send(r.file_archive_upload(project, data, path))

    async def download_archive(self, project: str, path: str = "") -> bytes:
        """A directory (default the project directory) as tar.gz bytes."""
        return await self._c._send(r.file_archive_download(project, path))


class Secrets:
    """``/v1/projects/{name}/secrets``: write-only values given to the
    commands that name them (``secrets=[...]``, ``secret_files={...}`` of
    ``commands.start``/``run``) and redacted from their output."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def set(self, project: str, name: str, value: str) -> Secret:
        """Sets a secret (a new version); the value is never returned."""
        return await self._c._send(r.secret_set(project, name, value))

    async def list(self, project: str, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[Secret]:
        """Names, versions, who set them and when."""
        return await self._c._send(r.secret_list(project, limit, cursor))

    async def get(self, project: str, name: str) -> Secret:
        return await self._c._send(r.secret_get(project, name))

    async def delete(self, project: str, name: str) -> None:
        await self._c._send(r.secret_delete(project, name))


class Audit:
    """``/v1/audit``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(
        self,
        *,
        actor: Optional[str] = None,
        action: Optional[str] = None,
        project: Optional[str] = None,
        since: Optional[Union[datetime, str]] = None,
        until: Optional[Union[datetime, str]] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Page[AuditEntry]:
        """Audit entries, newest first."""
        filters = dict(
            actor=actor, action=action, project=project, since=since, until=until, limit=limit, cursor=cursor
        )
        return await self._c._send(r.audit_list(filters))
