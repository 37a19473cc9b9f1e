"""`rdev mcp` driven by the official MCP Python SDK's stdio client (the
`mcp` package), as an agent's host would: it starts the server as a child
process and talks JSON-RPC over its stdin/stdout.

Started by cli/tests/mcp.rs, which runs a live rdev and passes RDEV_BIN
(this checkout's `rdev`), RDEV_TEST_URL, RDEV_TEST_API_KEY and
RDEV_TEST_PROJECT (a project made for the run, the server's default)."""

from __future__ import annotations

import asyncio
import os
import re
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = {
    "run_command",
    "start_command",
    "read_output",
    "send_input",
    "cancel_command",
    "list_projects",
    "list_commands",
}


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these through `cargo test -p rdev-cli --test mcp`", pytrace=False)
    return value


@asynccontextmanager
async def session(tmp_path) -> AsyncIterator[ClientSession]:
    server = StdioServerParameters(
        command=env("RDEV_BIN"),
        args=["mcp"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RDEV_URL": env("RDEV_TEST_URL"),
            "RDEV_API_KEY": env("RDEV_TEST_API_KEY"),
            "RDEV_PROJECT": env("RDEV_TEST_PROJECT"),
            "XDG_CONFIG_HOME": str(tmp_path),  # no profile of the machine's user
        },
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


async def call(s: ClientSession, tool: str, **args) -> tuple[str, bool]:
    result = await s.call_tool(tool, args)
    text = "".join(getattr(c, "text", "") for c in result.content)
    return text, bool(result.is_error)


def run(coro) -> None:
    asyncio.run(coro)


def test_lists_every_tool_with_a_json_schema_and_a_description(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert t.input_schema["type"] == "object", t.name
                assert len(t.description or "") > 40, t.name
            run_schema = tools["run_command"].input_schema
            assert run_schema["required"] == ["command"]
            assert {"project", "command", "timeout_s", "wait_s", "tail_bytes"} <= set(run_schema["properties"])
            assert run_schema["properties"]["command"]["type"] == "string"
            assert "from_seq" in tools["read_output"].input_schema["properties"]
            assert tools["cancel_command"].input_schema["required"] == ["id"]

    run(main())


def test_run_command_returns_exit_code_and_output(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, is_error = await call(s, "run_command", command="echo hello; echo oops >&2")
            assert not is_error, text
            assert ": succeeded (exit code 0" in text, text
            assert re.search(r"--- stdout:\nhello\n", text), text
            assert re.search(r"--- stderr:\noops\n", text), text

    run(main())


def test_a_failing_command_reports_its_exit_code_and_is_not_a_tool_error(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, is_error = await call(s, "run_command", command="echo before; exit 7")
            assert not is_error, text
            assert ": failed (exit code 7" in text, text
            assert "before" in text

    run(main())


def test_long_output_is_cut_to_its_tail_with_a_note(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, _ = await call(s, "run_command", command="seq 1 5000", tail_bytes=100)
            assert "not shown" in text and "read_output" in text, text
            assert "4999\n5000\n--- stderr: (empty)" in text, text
            assert "\n1\n" not in text

    run(main())


def test_start_read_and_cancel_a_long_command(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, is_error = await call(
                s, "start_command", command="for i in 1 2 3 4 5; do echo line $i; done; sleep 60"
            )
            assert not is_error, text
            cmd_id = re.search(r"command ([0-9a-f-]{36})", text).group(1)
            seen, next_seq = "", 0
            for _ in range(20):
                text, is_error = await call(s, "read_output", id=cmd_id, from_seq=next_seq, wait_s=3)
                assert not is_error, text
                next_seq = int(re.search(r"next_seq: (\d+)", text).group(1))
                seen += text.split("--- output:\n", 1)[1] if "--- output:\n" in text else ""
                if "line 5" in seen:
                    break
            assert [l for l in seen.splitlines() if l.startswith("line")] == [f"line {i}" for i in range(1, 6)]

            text, is_error = await call(s, "cancel_command", id=cmd_id)
            assert not is_error and "cancel" in text, text
            for _ in range(40):
                text, _ = await call(s, "list_commands", status="cancelled")
                if cmd_id in text:
                    break
                await asyncio.sleep(0.25)
            assert cmd_id in text, text

            text, is_error = await call(s, "cancel_command", id=cmd_id)
            assert is_error and "409" in text, text

    run(main())


def test_an_interactive_command_is_driven_with_send_input(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, is_error = await call(
                s, "start_command", command='while read l; do echo "got $l"; done', interactive=True
            )
            assert not is_error, text
            cmd_id = re.search(r"command ([0-9a-f-]{36})", text).group(1)
            text, is_error = await call(s, "send_input", id=cmd_id, text="hello\n")
            assert not is_error and "read_output" in text, text
            seen, next_seq = "", 0
            for _ in range(20):
                text, _ = await call(s, "read_output", id=cmd_id, from_seq=next_seq, wait_s=3)
                next_seq = int(re.search(r"next_seq: (\d+)", text).group(1))
                seen += text.split("--- output:\n", 1)[1] if "--- output:\n" in text else ""
                if "got hello" in seen:
                    break
            assert "got hello" in seen, seen
            text, is_error = await call(s, "send_input", id=cmd_id, eof=True)
            assert not is_error and "closed" in text, text
            for _ in range(40):
                text, _ = await call(s, "list_commands", status="succeeded")
                if cmd_id in text:
                    break
                await asyncio.sleep(0.25)
            assert cmd_id in text, text
            text, is_error = await call(s, "send_input", id=cmd_id, text="late\n")
            assert is_error and "409" in text, text

    run(main())


def test_projects_are_listed_and_mistakes_are_tool_errors(tmp_path) -> None:
    async def main() -> None:
        async with session(tmp_path) as s:
            text, _ = await call(s, "list_projects")
            assert f"{env('RDEV_TEST_PROJECT')} [default] (local)" in text, text
            text, is_error = await call(s, "run_command", project="no-such-project", command="true")
            assert is_error and "404" in text, text

    run(main())
