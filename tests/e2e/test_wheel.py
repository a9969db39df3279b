"""cnnctl as `pip install` (not editable) leaves it: a wheel built from the repository, installed into a
fresh virtual environment, run from a folder that is not the repository. The presets and search spaces
travel in the wheel as package data (pyproject.toml maps configs/ to orchestrator.configs).

Lean on purpose: the wheel goes in with --no-deps, and the new environment sees the test interpreter's
site-packages through a .pth line for the dependencies only (no .pth file of theirs is run, so the
test environment's editable cnnctl is not on the path): cnnctl itself comes only from the wheel."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "orchestrator", "models", "shards", "configs"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(the new environment's bin/, the environment to run it with, a folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources, so the repository gets no build/ or egg-info.
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True)
    wheel, = (tmp / "dist").glob("cnnctl-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", str(wheel)], check=True)
    target = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    deps = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (target / "_cnnctl_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV") and not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp / "home")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import models, orchestrator, orchestrator.config as c, shards.reader as r; "
                            "print(*orchestrator.__path__, c.__file__, r.__file__, models.__file__, c.CONFIGS_DIR, "
                            "sep='\\n')"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), (target, where)
    assert Path(where[-1]) == target / "orchestrator" / "configs", where
    # Every module and preset of the repository is in the wheel (pyproject.toml lists the packages by
    # name: a new subpackage must be added there), the presets under orchestrator/configs.
    def files(root: Path, pattern: str) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob(pattern) if "__pycache__" not in p.parts}

    for package in ("orchestrator", "models", "shards"):
        wheel = {f for f in files(target / package, "*.py") if not f.startswith("configs/")}
        assert wheel == files(REPO / package, "*.py"), package
    assert files(target / "orchestrator" / "configs", "*.yaml") == files(REPO / "configs", "*.yaml")
    return venv / "bin", env, elsewhere


def _cnnctl(installed, *args: str, timeout: float = 120) -> tuple[int, str]:
    bin_dir, env, cwd = installed
    res = subprocess.run([str(bin_dir / "cnnctl"), *args], cwd=cwd, env=env, timeout=timeout,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return res.returncode, res.stdout


def test_the_installed_wheel_lists_models_and_finds_the_presets(installed):
    rc, out = _cnnctl(installed, "models")
    assert rc == 0 and "alexnet" in out and "vgg-e" in out, out
    rc, out = _cnnctl(installed, "train", "--preset", "demo-fashion", "--dry-run")
    assert rc == 0 and "not found" not in out, out
    assert "fashion-mnist" in out, out
    # the search spaces travel too
    rc, out = _cnnctl(installed, "tune", "--preset", "demo-fashion", "--search", "lrn", "--dry-run")
    assert rc == 0 and "not found" not in out, out
    rc, out = _cnnctl(installed, "train", "--preset", "no-such-preset", "--dry-run")
    assert rc == 1 and "known: demo-fashion, imagenet-alexnet" in out, out
