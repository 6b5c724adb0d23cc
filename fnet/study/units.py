"""A study plan cut into units, each submitted as one job by :mod:`fnet.study.dispatch`: one per training run
(a fine-tuned task and seed with its networks, controls and evaluations, or a zero-shot part), or one per stage
group of such a part; each unit knows the units its jobs' dependencies belong to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from fnet.study.scheduler import Job

__all__ = ["UNITS", "Unit", "closure", "ordered", "part_of", "units_of"]

#: ``--unit`` choices: a submitted job per training run, or per stage group of one
UNITS = ("run", "stage")


@dataclass
class Unit:
    """One submitted job's share of the plan: its jobs (plan order) and the units they need."""

    name: str
    jobs: list[str]
    needs: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------------------------
def part_of(job: Job) -> str:
    """The plan part a job belongs to: its networks' scope (``sst2/run0``, ``sst2-zeroshot``, ``model``), for a
    training job its task and run."""
    meta = job.meta or {}
    if meta.get("scope"):
        return str(meta["scope"])
    task = str(meta.get("task") or job.name.split("/")[1])
    return task if meta.get("run") is None else f"{task}/run{meta['run']}"


def units_of(jobs: Sequence[Job], by: str = "run") -> list[Unit]:
    """The plan's units (``by``: ``run`` or ``stage``), in the order of their first job, each with the units its
    jobs' dependencies belong to.

    Examples
    --------
    >>> from fnet.study.plan import plan
    >>> from fnet.study.preset import load_preset
    >>> [u.name for u in units_of(plan(load_preset("tiny_v2")))]
    ['sst2/run0', 'sst2/run1']
    >>> for unit in units_of(plan(load_preset("tiny_v2")), "stage")[:3]:
    ...     print(unit.name, unit.needs)
    sst2/run0/train []
    sst2/run0/analyze ['sst2/run0/train']
    sst2/run0/controls ['sst2/run0/train', 'sst2/run0/analyze']
    """
    if by not in UNITS:
        raise ValueError(f"unknown unit {by!r}; valid: {', '.join(UNITS)}")
    owner = {job.name: part_of(job) + (f"/{job.stage}" if by == "stage" else "") for job in jobs}
    units: dict[str, Unit] = {}
    for job in jobs:
        unit = units.setdefault(owner[job.name], Unit(owner[job.name], []))
        unit.jobs.append(job.name)
        for dep in job.deps:
            if owner[dep] != unit.name and owner[dep] not in unit.needs:
                unit.needs.append(owner[dep])
    return list(units.values())


def closure(jobs: Sequence[Job], names: Sequence[str]) -> list[Job]:
    """The jobs named and every job they depend on, directly or not, in plan order."""
    by_name = {j.name: j for j in jobs}
    keep, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += by_name[name].deps
    return [j for j in jobs if j.name in keep]


def ordered(units: Sequence[Unit]) -> list[Unit]:
    """Units with every unit after the units it needs (stable otherwise)."""
    by_name, out, seen = {u.name: u for u in units}, [], set()

    def visit(unit: Unit) -> None:
        if unit.name in seen:
            return
        seen.add(unit.name)
        for need in unit.needs:
            visit(by_name[need])
        out.append(unit)

    for unit in units:
        visit(unit)
    return out
