"""The live stack these tests run against is started by the Rust test
`tests/tests/clients.rs` (`cargo test -p rdev-tests --test clients`), which
passes its addresses in the environment:

- ``RDEV_TEST_URL``: the API;
- ``RDEV_TEST_FLAKY_URL``: the same API behind a proxy that cuts every
  event stream in the middle of an output event;
- ``RDEV_TEST_API_KEY``: an admin key.

Tests that need none of these (parsers, the webhook test vector) run
anywhere."""

from __future__ import annotations

import os
import uuid

import pytest

import rdev


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: these tests run against a live rdev started by "
            "`cargo test -p rdev-tests --test clients`",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def url() -> str:
    return _env("RDEV_TEST_URL")


@pytest.fixture(scope="session")
def flaky_url() -> str:
    return _env("RDEV_TEST_FLAKY_URL")


@pytest.fixture(scope="session")
def api_key() -> str:
    return _env("RDEV_TEST_API_KEY")


@pytest.fixture
def client(url: str, api_key: str):
    with rdev.Client(url, api_key) as c:
        yield c


@pytest.fixture
def project(client: rdev.Client) -> str:
    """A fresh project (local executor) for one test."""
    name = f"py-{uuid.uuid4().hex[:12]}"
    client.projects.create(name, executor={"kind": "local", "workdir": name})
    return name
