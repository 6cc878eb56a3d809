"""Session-wide test settings."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _config_home(tmp_path_factory):
    """medvit writes its patient-ID key under $XDG_CONFIG_HOME (medvit.privacy): tests (and the
    subprocesses they start) use a temporary one, never the real home's."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before
