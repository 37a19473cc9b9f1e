"""Running, following and cancelling commands against a live rdev."""

from __future__ import annotations

import asyncio

import pytest

import rdev

LINES = 60
# Lines on stdout and stderr, 20 ms apart, so each is a chunk of its own:
# the proxy of RDEV_TEST_FLAKY_URL cuts streams several times on the way.
SCRIPT = f'for i in $(seq 1 {LINES}); do echo "out $i"; echo "err $i" >&2; sleep 0.02; done; printf end'
WANT_OUT = "".join(f"out {i}\n" for i in range(1, LINES + 1)) + "end"
WANT_ERR = "".join(f"err {i}\n" for i in range(1, LINES + 1))


def test_run_returns_exit_code_status_and_both_streams(client: rdev.Client, project: str) -> None:
    result = client.commands.run(project, "echo out; echo err >&2")
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.ok
    assert result.reason in (None, "exited")  # servers before and after end reasons
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.command.finished_at is not None
    assert client.commands.get(result.id).status == "succeeded"


def test_get_with_wait_answers_when_the_command_ends(client: rdev.Client, project: str) -> None:
    started = client.commands.start(project, "sleep 0.5; echo done")
    ended = client.commands.get(started.id, wait=50)
    assert ended.status == "succeeded"
    assert ended.exit_code == 0
    assert ended.output_bytes == 5


def test_argv_runs_without_a_shell(client: rdev.Client, project: str) -> None:
    result = client.commands.run(project, ["printf", "%s|", "a b", "$HOME"])
    assert result.stdout == "a b|$HOME|"


def test_non_zero_exit_is_a_result_not_an_exception(client: rdev.Client, project: str) -> None:
    result = client.commands.run(project, "echo partial; exit 3")
    assert result.status == "failed"
    assert result.exit_code == 3
    assert not result.ok
    assert result.stdout == "partial\n"


def test_live_output_arrives_in_order_each_chunk_once(client: rdev.Client, project: str) -> None:
    seen: list[rdev.OutputEvent] = []
    result = client.commands.run(project, SCRIPT, on_output=seen.append)
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs))
    assert "".join(e.data for e in seen if e.stream == "stdout") == WANT_OUT
    assert "".join(e.data for e in seen if e.stream == "stderr") == WANT_ERR
    assert result.stdout == WANT_OUT


def test_stream_survives_forced_disconnects_without_loss_or_duplicates(
    client: rdev.Client, project: str, flaky_url: str, api_key: str
) -> None:
    started = client.commands.start(project, SCRIPT)
    with rdev.Client(flaky_url, api_key) as flaky:
        stream = flaky.commands.events(started.id)
        events = list(stream)
    outputs = [e for e in events if isinstance(e, rdev.OutputEvent)]
    # Nothing lost: seq runs 1, 2, 3… without a hole; nothing repeated.
    assert [e.seq for e in outputs] == list(range(1, len(outputs) + 1))
    assert "".join(e.data for e in outputs if e.stream == "stdout") == WANT_OUT
    assert "".join(e.data for e in outputs if e.stream == "stderr") == WANT_ERR
    assert stream.reconnects >= 2, "the proxy should have cut the stream several times"
    assert isinstance(events[-1], rdev.EndEvent)
    assert events[-1].command.status == "succeeded"
    assert stream.final is not None and stream.final.exit_code == 0


def test_async_stream_survives_forced_disconnects(url: str, flaky_url: str, api_key: str, project: str) -> None:
    async def main() -> None:
        async with rdev.AsyncClient(url, api_key) as client, rdev.AsyncClient(flaky_url, api_key) as flaky:
            started = await client.commands.start(project, SCRIPT)
            stream = flaky.commands.events(started.id)
            outputs = [e async for e in stream if isinstance(e, rdev.OutputEvent)]
            assert [e.seq for e in outputs] == list(range(1, len(outputs) + 1))
            assert "".join(e.data for e in outputs if e.stream == "stdout") == WANT_OUT
            assert "".join(e.data for e in outputs if e.stream == "stderr") == WANT_ERR
            assert stream.reconnects >= 2
            result = await client.commands.result(started.id)
            assert (result.exit_code, result.stdout, result.stderr) == (0, WANT_OUT, WANT_ERR)
            failed = await client.commands.run(project, "exit 7")
            assert (failed.status, failed.exit_code) == ("failed", 7)

    asyncio.run(main())


def test_resuming_after_a_seq_skips_what_was_seen(client: rdev.Client, project: str) -> None:
    result = client.commands.run(project, "for i in 1 2 3 4; do echo $i; sleep 0.05; done")
    events = list(client.commands.events(result.id, after_seq=2))
    seqs = [e.seq for e in events if isinstance(e, rdev.OutputEvent)]
    assert seqs and min(seqs) == 3
    assert isinstance(events[-1], rdev.EndEvent)


def test_cancel_stops_a_running_command(client: rdev.Client, project: str) -> None:
    started = client.commands.start(project, "echo started; sleep 30")
    final = None
    for ev in started.events():
        if isinstance(ev, rdev.OutputEvent) and ev.data == "started\n":
            client.commands.cancel(started.id)
        if isinstance(ev, rdev.EndEvent):
            final = ev.command
    assert final is not None
    assert final.status == "cancelled"
    assert final.reason in (None, "cancelled")
    with pytest.raises(rdev.ConflictError) as err:
        started.cancel()
    assert err.value.status == 409


def test_list_and_output(client: rdev.Client, project: str) -> None:
    result = client.commands.run(project, "printf 'a\\377b'")
    assert client.commands.output(result.id) == b"a\xffb"  # raw bytes
    assert result.stdout == "a\ufffdb"
    page = client.commands.list(project=project, limit=1)
    assert [c.id for c in page.items] == [result.id]


def test_a_piped_command_answers_each_line_as_it_is_sent(client: rdev.Client, project: str) -> None:
    started = client.commands.start(project, 'while read l; do echo "got $l"; done', stdin="pipe")
    events = started.events()
    seen = ""
    for n in (1, 2):
        client.commands.send_input(started.id, f"line {n}\n")
        # The answer to line n arrives before line n+1 is sent.
        for ev in events:
            if isinstance(ev, rdev.OutputEvent):
                seen += ev.data
                if f"got line {n}\n" in seen:
                    break
    client.commands.send_input(started.id, b"", eof=True)
    result = started.result()
    assert (result.status, result.stdout) == ("succeeded", "got line 1\ngot line 2\n")
    with pytest.raises(rdev.APIError) as ended:
        client.commands.send_input(started.id, "late\n")
    assert ended.value.status == 409


def test_async_input_and_signal(url: str, api_key: str, project: str) -> None:
    async def go() -> rdev.Command:
        async with rdev.AsyncClient(url, api_key) as c:
            started = await c.commands.start(project, "sleep 60", stdin="pipe")
            assert await c.commands.send_input(started.id, "ignored\n") >= 1
            await c.commands.signal(started.id, "INT")
            return await c.commands.wait(started.id)

    final = asyncio.run(go())
    assert (final.reason, final.signal) == ("signaled", 2)
