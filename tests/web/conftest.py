"""Fixtures for the web tests; the fakes themselves live in L{webfakes}."""

from __future__ import annotations

import pytest
from webfakes import Web, make_web


@pytest.fixture
def web() -> Web:
    """A node with a 1 KiB value limit, its web app and a StubTreq client."""
    return make_web(max_value_bytes=1024)
