"""problem+json answers become exceptions with status, title, detail and
field errors."""

from __future__ import annotations

import pytest

import rdev


def test_validation_failure_names_each_field(client: rdev.Client, project: str) -> None:
    with pytest.raises(rdev.ValidationError) as err:
        client.projects.create("Not A Valid Name")
    e = err.value
    assert e.status == 422
    assert e.title == "Validation Failed"
    assert e.detail
    assert e.type.startswith("urn:rdev:problem:")
    assert [f.field for f in e.errors] == ["name"]
    assert "name:" in str(e)

    with pytest.raises(rdev.ValidationError) as err:
        client.commands.start(project, "true", priority=42)
    assert "priority" in [f.field for f in err.value.errors]


def test_statuses_map_to_exception_classes(client: rdev.Client, url: str) -> None:
    with pytest.raises(rdev.NotFoundError) as err:
        client.projects.get("no-such-project")
    assert err.value.status == 404 and isinstance(err.value, rdev.APIError)

    with rdev.Client(url, "rdev_" + "x" * 43) as bad:
        with pytest.raises(rdev.AuthenticationError) as err:
            bad.projects.list()
    assert err.value.status == 401


def test_unreachable_api_is_a_connection_error() -> None:
    with rdev.Client("http://127.0.0.1:9", "k") as c:
        with pytest.raises(rdev.APIConnectionError):
            c.projects.list()


def test_unknown_response_fields_are_kept_not_refused() -> None:
    cmd = rdev.Command.from_json(
        {"id": "x", "project": "p", "status": "failed", "exit_code": 137, "reason": "memory_limit",
         "signal": 9, "a_future_field": {"n": 1}, "created_at": "2026-11-27T21:00:00.123456789Z"}
    )
    assert (cmd.reason, cmd.signal) == ("memory_limit", 9)
    assert cmd.raw["a_future_field"] == {"n": 1}
    assert cmd.created_at is not None and cmd.created_at.microsecond == 123456
