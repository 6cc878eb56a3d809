"""The built wheel carries the configs: a fresh venv installed from it runs `--config NAME` from
another folder (issue 11: the wheel shipped no YAML, so configs worked only from a checkout).

Cheap on CI: the wheel is built without build isolation and installed without dependencies;
the fresh venv sees this interpreter's already-installed packages through a .pth line, while
medvit itself must come from the wheel (checked through medvit.__file__)."""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build writes build/ and *.egg-info next to the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("medvit", "configs"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
         str(src)], cwd=tmp)
    wheel = next((tmp / "dist").glob("medvit-*.whl"))
    env = tmp / "venv"
    run([sys.executable, "-m", "venv", str(env)], cwd=tmp)
    py = env / "bin" / "python"
    purelib = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages(),
             *(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))}  # chained venvs
    # appended after the venv's own site-packages; .pth files in those folders (the editable
    # medvit's finder) are not run, so `import medvit` can only find the wheel's copy
    (purelib / "outer.pth").write_text("".join(f"{p}\n" for p in sorted(outer) if p != str(purelib)))
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    return env


def test_wheel_ships_configs_and_finds_them_by_name(venv, tmp_path):
    where = run([str(venv / "bin" / "python"), "-c", "import medvit; print(medvit.__file__)"], cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where  # the wheel's medvit, not the checkout's
    medvit = str(venv / "bin" / "medvit")
    help_text = run([medvit, "train", "--help"], cwd=tmp_path)
    assert "demo_cnn" in help_text and "mammo_vit16" in help_text
    resolved = run([medvit, "train", "--config", "demo_cnn", "--print-config", "train.epochs=3"], cwd=tmp_path)
    assert "backbone: resnet10t" in resolved and "epochs: 3" in resolved and "image_size: 128" in resolved
    resolved = run([medvit, "train", "--config", "demo_vit", "--print-config"], cwd=tmp_path)
    assert "patch_size: 16" in resolved  # demo_vit -> mammo_vit16 -> defaults, all by `base:`
    # the seed studies' YAMLs come from the wheel too (they once resolved against the checkout)
    code = ("from medvit.studies.grid import STUDIES, expand, load_study; import sys; "
            "[expand(n, *load_study(n), sys.argv[1]) for n in STUDIES]; "
            "print(STUDIES['learning-curve'].config)")
    where = run([str(venv / "bin" / "python"), "-c", code, str(tmp_path / "out")], cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where
