"""The Makefile's phony targets have rules, and `bench` calls the benchmarks with flags they take."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_bench_target_runs_the_three_benchmarks_with_real_flags():
    # issue 11: `bench` was listed in .PHONY without a rule ("No rule to make target 'bench'")
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "bench", "VENV=/nonexistent-venv"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = [line for line in dry.stdout.splitlines() if "pipelines/bench_" in line]
    scripts = sorted(re.search(r"pipelines/(bench_\w+\.py)", line).group(1) for line in lines)
    assert scripts == ["bench_ingest.py", "bench_predict.py", "bench_train.py"]
    for line in lines:
        source = (ROOT / "pipelines" / re.search(r"pipelines/(bench_\w+\.py)", line).group(1)).read_text()
        for flag in re.findall(r"\s(--[\w-]+)", line):
            assert f'"{flag}"' in source, f"{flag} is not an option of {line}"
