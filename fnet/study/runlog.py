"""The study's run log, ``runs.jsonl``: one line per run of the study command (appended by
``python -m fnet.study``), read back for the report's Machines line and its table of runs."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Sequence

from fnet.report import markdown_table
from fnet.study.scheduler import machine

__all__ = ["append_run", "read_runs", "machines_line", "runs_table", "run_at"]


def append_run(root: Path, run: dict) -> None:
    """Append one run's wall time (and counts, or ``interrupted``) to ``runs.jsonl``, for the report."""
    with open(root / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(run) + "\n")


def read_runs(root: Path) -> list[dict]:
    """Every run of the study command but dry runs (``runs.jsonl``, appended by the runner)."""
    path = root / "runs.jsonl"
    if not path.exists():
        return []
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in runs if not r.get("dry_run")]


def run_at(runs: Sequence[dict], finished: str | None) -> dict | None:
    """The run of the study command during which a job finished (its ``finished`` time, local, within the run's
    start and wall time): where a job's own record lacks its machine, that run's machine and code are its own."""
    if not finished:
        return None
    when = datetime.fromisoformat(finished)
    for run in runs:
        try:
            start = datetime.fromisoformat(run["started"])
        except (KeyError, TypeError, ValueError):
            continue
        if start <= when <= start + timedelta(seconds=float(run.get("seconds") or 0) + 1):
            return run
    return None


def machines_line(runs: Sequence[dict]) -> str:
    """The machines the runs used, with how many runs each (a study resumed elsewhere names both); runs that did
    not record theirs (older runners) are counted as such; no runs at all: the machine writing the report."""
    if not runs:
        return f"{machine()} (the machine writing this report; no run recorded yet)"
    counts = Counter(r.get("machine") or "not recorded" for r in runs)
    return "; ".join(f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in counts.items())


def _ran(run: dict) -> Any:
    """The jobs a finished run did, and whether it stopped at its ``--hours`` limit with jobs left."""
    ran = (run.get("counts") or {}).get("ran")
    return f"{ran} (stopped at --hours {run['hours']:g})" if run.get("deadline_reached") else ran


def runs_table(runs: Sequence[dict]) -> list[str]:
    """The wall time and machine of every run of the study."""
    if not runs:
        return []
    total = sum(float(r.get("seconds") or 0) for r in runs)
    table = [
        {
            "started": r.get("started"),
            "machine": r.get("machine") or "not recorded",
            "workers": r.get("workers"),
            "ran": "stopped midway" if r.get("interrupted") else _ran(r),
            "failed": (r.get("counts") or {}).get("failed"),
            "wall minutes": round(float(r.get("seconds") or 0) / 60, 1),
        }
        for r in runs
    ]
    return [
        f"Runs of the study command (it resumes): {len(runs)}, {total / 3600:.2f} h of wall time in all.",
        "",
        markdown_table(table),
        "",
    ]
