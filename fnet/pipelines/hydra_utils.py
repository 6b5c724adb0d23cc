"""Run plumbing shared by the entry points: the task wrapper, the sweep-failure callback, logger/callback
instantiation, the job's overrides, plain containers.

The task wrapper follows lightning-hydra-template: it logs a failure with its traceback, writes ``failure.json``
into the job's output folder, and always finishes the W&B run. In a Hydra *multirun* the failure is recorded and
the job returns ``None`` so that the remaining jobs of the sweep still run (Hydra's own partial-failure support
stops at the end of the first batch holding a failure and names only that one); :class:`SweepFailures` (registered
in ``conf/hydra/default.yaml``) then lists every failed job at the end and exits non-zero. In a single run it
re-raises, so the command exits non-zero. Ctrl-C (``KeyboardInterrupt``, or the ``SystemExit(1)`` Lightning turns
it into) is recorded too, then stops the run, single or multi.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("fnet")

__all__ = [
    "SweepFailures",
    "container",
    "failed_jobs",
    "finish_wandb",
    "instantiate_callbacks",
    "instantiate_loggers",
    "log_hyperparameters",
    "output_dir_of",
    "overrides",
    "task_wrapper",
]


def _is_multirun() -> bool:
    try:
        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # outside Hydra
        return False


def output_dir_of(cfg: Any) -> Path:
    """``cfg.paths.output_dir`` (the Hydra run folder), or the working directory when the config has none."""
    try:
        return Path(cfg.paths.output_dir)
    except Exception:
        return Path.cwd()


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run if one is open, so the next job of a sweep starts a new run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            log.info("closing W&B run %s", wandb.run.name)
            wandb.finish(exit_code=exit_code)


def task_wrapper(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap an entry point's ``run(cfg)`` (see module docstring)."""

    @functools.wraps(task)
    def wrapped(cfg):
        started = time.time()
        try:
            result = task(cfg)
        except Exception as err:  # noqa: BLE001 - every failure is recorded, then re-raised or swallowed
            _record_failure(cfg, err, started)
            finish_wandb(exit_code=1)
            if _is_multirun():
                return None
            raise
        except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C: recorded, then the whole run stops
            if isinstance(err, SystemExit) and err.code in (None, 0):
                raise
            _record_failure(cfg, err, started, interrupted=True)
            finish_wandb(exit_code=1)
            raise
        finish_wandb(exit_code=0)
        log.info("job finished in %.1f s; outputs in %s", time.time() - started, output_dir_of(cfg))
        return result

    return wrapped


def _record_failure(cfg: Any, err: BaseException, started: float, interrupted: bool = False) -> Path:
    """Write the job's ``failure.json`` (error, traceback, seconds, overrides, interrupted) and log it."""
    out = output_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    record = {
        "error": error,
        "traceback": traceback.format_exc(),
        "seconds": round(time.time() - started, 2),
        "overrides": overrides(),
        "interrupted": interrupted,
    }
    path = out / "failure.json"
    path.write_text(json.dumps(record, indent=1))
    log.error("job %s: %s (recorded in %s)", "interrupted" if interrupted else "failed", error, path)
    return path


class SweepFailures(Callback):
    """Hydra callback: at the end of a multirun, list the jobs that failed (their ``failure.json`` files written
    during this multirun: job folder, overrides, error) and exit non-zero if there are any.

    Hydra swallows exceptions raised in callbacks (a warning only), so the exit is a ``SystemExit`` carrying the
    list, which Python prints to stderr. Registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks``."""

    def __init__(self) -> None:
        self.started = time.time()
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        failures = failed_jobs(sweep_dir, since=self.started)
        if not failures:
            return
        lines = [f"{len(failures)} job(s) of the sweep in {sweep_dir} failed:"]
        for f in failures:
            lines.append(f"  {f['job_dir']}  [{' '.join(f['overrides'])}]  {f['error']}")
        lines.append(
            f"(each job folder holds failure.json with the traceback; `python -m fnet.report.sweep {sweep_dir}` "
            "tabulates the finished jobs)"
        )
        message = "\n".join(lines)
        log.error(message)
        raise SystemExit(message)


def failed_jobs(sweep_dir: str | Path, since: float | None = None) -> list[dict]:
    """``{job_dir, overrides, error, interrupted}`` of every ``failure.json`` below ``sweep_dir`` (written at or
    after ``since``, a ``time.time()``, when given: a rerun into the same folder does not report old failures)."""
    out = []
    for path in sorted(Path(sweep_dir).rglob("failure.json")):
        if since is not None and path.stat().st_mtime < since - 1.0:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            record = {"error": f"unreadable failure.json ({type(err).__name__}: {err})"}
        out.append(
            {
                "job_dir": str(path.parent),
                "overrides": [str(o) for o in record.get("overrides") or []],
                "error": str(record.get("error", "")).splitlines()[0][:300] if record.get("error") else "",
                "interrupted": bool(record.get("interrupted", False)),
            }
        )
    return out


def overrides() -> list[str]:
    """The command line's overrides of this Hydra job (``[]`` outside Hydra), for result files' provenance."""
    try:
        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - HydraConfig.get raises ValueError when not initialised
        return []


def container(cfg: Any) -> Any:
    """An OmegaConf node as plain, resolved Python containers; anything else unchanged."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def instantiate_loggers(logger_cfg: Any) -> list:
    """Lightning loggers from the ``logger`` config group (a dict of ``_target_`` entries; empty = none)."""
    loggers = []
    if not logger_cfg:
        return loggers
    for name, conf in logger_cfg.items():
        if conf is not None and "_target_" in conf:
            log.info("instantiating logger %s <%s>", name, conf._target_)
            loggers.append(instantiate(conf))
    return loggers


def instantiate_callbacks(callbacks_cfg: Any) -> list:
    """The Lightning callbacks of a ``callbacks`` config group (each entry with a ``_target_``), instantiated."""
    callbacks = []
    if not callbacks_cfg:
        return callbacks
    for name, conf in callbacks_cfg.items():
        if conf is not None and "_target_" in conf:
            log.info("instantiating callback %s <%s>", name, conf._target_)
            callbacks.append(instantiate(conf))
    return callbacks


def log_hyperparameters(loggers: list, cfg: Any, extra: dict | None = None) -> None:
    """The resolved config (and anything extra, e.g. mask statistics) into every logger."""
    params = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    params = dict(params, **(extra or {}))
    for logger in loggers:
        logger.log_hyperparams(params)
