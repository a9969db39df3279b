"""cnnctl as `pip install` (not editable) leaves it: a wheel built from the repository, installed into a
fresh virtual environment, run from a folder that is not the repository. The presets and search spaces
travel in the wheel as package data (pyproject.toml maps configs/ to cnnctl.orchestrator.configs), and
the packages install under the cnnctl namespace, so a user's own `models` package beside a run does not
stand in for cnnctl's.

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
SOURCES = ["pyproject.toml", "README.md", "cnnctl", "orchestrator", "models", "shards", "configs"]


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
    where = subprocess.run([str(py), "-c", "from cnnctl import models, orchestrator; import cnnctl.orchestrator.config "
                            "as c, cnnctl.shards.reader as r; print(*orchestrator.__path__, c.__file__, r.__file__, "
                            "models.__file__, c.CONFIGS_DIR, sep='\\n')"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(target / "cnnctl") for p in where), (target, where)
    assert Path(where[-1]) == target / "cnnctl" / "orchestrator" / "configs", where
    # nothing of cnnctl's at the top of site-packages, where it would take a user's package names
    assert not any((target / name).exists() for name in ("orchestrator", "models", "shards")), target
    # Every module and preset of the repository is in the wheel (pyproject.toml lists the packages by
    # name: a new subpackage must be added there), the presets under cnnctl/orchestrator/configs.
    def files(root: Path, pattern: str) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob(pattern) if "__pycache__" not in p.parts}

    for package in ("orchestrator", "models", "shards"):
        wheel = {f for f in files(target / "cnnctl" / package, "*.py") if not f.startswith("configs/")}
        assert wheel == files(REPO / package, "*.py"), package
    assert files(target / "cnnctl" / "orchestrator" / "configs", "*.yaml") == files(REPO / "configs", "*.yaml")
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


def test_a_run_from_a_folder_with_the_users_own_models_package(installed, fmnist_root, tmp_path):
    """Ray puts the driver's working folder on its workers' path: a user's `models/` there must not be
    imported in place of cnnctl's (with bare import names, the workers failed on it)."""
    bin_dir, env, _ = installed
    project = tmp_path / "my-project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('raise ImportError("the user\'s own models package")\n')
    (project / "shards").mkdir()
    (project / "shards" / "__init__.py").write_text('raise ImportError("the user\'s own shards package")\n')
    rc, out = _cnnctl((bin_dir, env, project), "train", "--preset", "demo-fashion", "--data", fmnist_root,
                      "--epochs", "1", "--name", "user", "--set", f"run.storage={tmp_path / 'runs'}",
                      "--set", "data.batch_size=32", "--set", "model.width=0.5", timeout=300)
    assert rc == 0, out
    assert "user's own" not in out, out
    assert (tmp_path / "runs" / "user" / "metrics.jsonl").is_file(), out
