"""Many ``evaluate.py`` jobs in one process: ``python -m fnet.pipelines.evaluate_batch SPEC.json``.

Why: the jobs of a study (or any sweep over masks) differ only in their mask. Run one by one, each pays for its
imports and for loading the model: about 15 s on the 2-core CPU machine, next to 15-30 s of scoring. Here each job's
config is composed with Hydra's compose API from ``conf/evaluate.yaml`` and its overrides, checked like the
command line's (:func:`fnet.pipelines.config.validate_config`) and run by :func:`fnet.pipelines.evaluate.run`
with one :class:`fnet.pipelines.evaluate.ModelPool` for the whole batch, so the model (or checkpoint) and the task's
rows are loaded once. A job's result is the one ``evaluate.py`` would write with the same overrides (tested).

Hydra's launcher plugins start one process per job by design, and ``hydra.main`` cannot run twice in a process,
so this small loop over ``compose`` is written here.

``SPEC.json``::

    {"jobs": [{"folder": "...", "overrides": ["task=sst2", "mask=lesion", ...], "marker": {...}}, ...]}

For each job, in order: its output folder is ``folder`` (``paths.output_dir``), its log ``folder/evaluate.log``.
While it runs, this process owns the folder (:func:`fnet.owner.own`: ``folder/job.lock``, released by the OS
however the process ends); a folder another live process owns is left untouched and counts as failed. When it
succeeds, ``folder/job.json`` is written last: ``marker`` with ``status``, ``seconds``, ``output`` and
``finished`` added (the done-marker of :mod:`fnet.study.scheduler`). When it fails, ``folder/failed.json`` holds
the error and the next job runs. The exit status is 1 when any job failed. Started by a study runner, the process
dies with it (:func:`fnet.owner.die_with_runner`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir

from fnet.cache import atomic_write_text
from fnet.owner import FolderOwned, die_with_runner, own
from fnet.paths import conf_dir as fnet_conf_dir
from fnet.paths import project_root
from fnet.pipelines.config import register_configs, validate_config
from fnet.pipelines.evaluate import ModelPool
from fnet.pipelines.evaluate import run as evaluate

__all__ = ["run_batch", "main"]

REPO_ROOT = project_root()  # paths.root_dir of the jobs: the checkout, or the working folder of an installed fnet
log = logging.getLogger("fnet")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # evaluate.py's (Hydra's job log format)


def _compose(conf_dir: Path, overrides: Sequence[str], folder: Path, root: Path) -> Any:
    # paths.output_dir / root_dir are Hydra runtime values (${hydra:...}) that compose does not set
    extra = [f"paths.output_dir={folder}"]
    if "PROJECT_ROOT" not in os.environ:
        extra.append(f"paths.root_dir={root}")
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides) + extra)


def _job_log(folder: Path) -> logging.Handler:
    """``folder/evaluate.log``: what evaluate.py's own log file would hold (fnet's messages from INFO up)."""
    handler = logging.FileHandler(folder / "evaluate.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def run_batch(jobs: Sequence[dict], *, conf_dir: str | Path | None = None, root: str | Path = REPO_ROOT) -> int:
    """Run ``jobs`` (``folder``, ``overrides``, optional ``marker``) in this process; returns how many failed."""
    conf_dir = Path(conf_dir or fnet_conf_dir()).resolve()
    register_configs()
    failed = 0
    level = log.level
    log.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        failed = _run_all(jobs, conf_dir, Path(root))
    finally:
        log.setLevel(level)
    return failed


def _run_all(jobs: Sequence[dict], conf_dir: Path, root: Path) -> int:
    failed = 0
    models = ModelPool()  # the jobs' models and rows, loaded once
    for i, job in enumerate(jobs):
        folder = Path(job["folder"])
        try:
            held = own(folder)  # the folder is this process's while the job runs
        except FolderOwned as err:  # another live process writes it: leave it alone, write nothing into it
            failed += 1
            log.error("job %s not run: %s", folder, err)
            continue
        with held:
            failed += not _run_job(i, len(jobs), job, folder, conf_dir, root, models)
    return failed


def _run_job(i: int, n: int, job: dict, folder: Path, conf_dir: Path, root: Path, models: ModelPool) -> bool:
    """One job of the batch in its (owned) folder; whether it succeeded."""
    handler = _job_log(folder)
    started = time.time()
    try:
        log.info("[batch %d/%d] %s", i + 1, n, " ".join(job["overrides"]))
        cfg = _compose(conf_dir, job["overrides"], folder, root)
        validate_config(cfg, "evaluate")
        evaluate(cfg, job_overrides=list(job["overrides"]), models=models)
    except Exception as err:  # noqa: BLE001 - recorded; the batch goes on with the next job
        log.error("job %s failed: %s", folder, err)
        atomic_write_text(
            folder / "failed.json",
            json.dumps(
                {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                    "seconds": round(time.time() - started, 2),
                    "overrides": list(job["overrides"]),
                },
                indent=1,
            ),
        )
        return False
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    if job.get("marker") is not None:
        marker = dict(
            job["marker"],
            status="done",
            seconds=time.time() - started,
            output="result.json",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        atomic_write_text(folder / "job.json", json.dumps(marker, indent=1))  # written last
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnet.pipelines.evaluate_batch SPEC.json``; returns the exit status."""
    die_with_runner()  # started by a study runner: never outlive it (a rerun would meet this process's writes)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print(__doc__.split("\n\n")[0] + "\nusage: python -m fnet.pipelines.evaluate_batch SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("jobs"), list):
        print(f"{argv[0]}: expected {{'jobs': [{{'folder', 'overrides', 'marker'}}, ...]}}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return 1 if run_batch(spec["jobs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
