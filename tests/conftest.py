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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (tiny models run faster, and bit-exact comparisons need one
    count); the count is restored for the modules after. Use: pytestmark = usefixtures("one_thread")."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kill_once_logged(cmd: list[str], run_dir, env: dict, steps: int = 2, timeout: float = 120) -> None:
    """Start `cmd` (a medvit training command writing to run_dir) and kill -9 it once `steps` steps
    are in its metrics_step.csv (each step is checkpointed right after it is logged): watching the
    small CSV is cheap, so the kill lands early even on a fast machine."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    step_log, deadline = Path(run_dir) / "metrics_step.csv", time.time() + timeout
    while time.time() < deadline:
        if step_log.exists() and step_log.read_text().count("\n") >= steps + 1:  # header + steps
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
