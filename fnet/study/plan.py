"""A study preset as a plan of ordinary jobs: ``train.py``, ``analyze.py``, the scale job and ``evaluate.py``.

:func:`plan` turns a preset (:func:`fnet.study.preset.load_preset`) into :class:`~fnet.study.scheduler.Job` s,
task by task: a training run per task (fine-tuned path), the networks of each K, a scale job per networks file
(``-m fnet.pipelines.study_controls``: the neurons' activation scale and massive units, which the
magnitude-matched and massive-unit masks need), and the evaluations. Every evaluation is one ``evaluate.py``
command whose mask is a kind of :data:`fnet.intervene.MASKS`: the random controls a preset asks for
(``controls: [count, magnitude]``) are the registry's controls of a lesion and of a preservation, by their
condition names, so a new control kind is planned without a line here.

Job names are stable (``evaluate/finetune/sst2/raw/magnitude/net3/seed1``): a committed report lists its finished
jobs by name, and :mod:`fnet.study.compose` replans a report's settings to check them.

The v2 keys of a preset (:class:`fnet.study.preset.StudyPreset`) add levels without renaming v1's jobs:
``training_runs`` makes every fine-tuned task one part per training run (``train/sst2/run2`` trains with
``seed=2``; its networks, controls and evaluations carry ``run2`` in their names and ``run`` in their meta),
``streams`` gives each random control its own stream (``mask.stream=<task>/run<r>``), ``core_seeds`` sets the
control seeds of the all-networks lesion and of preservation, ``ablations: [mean]`` adds mean ablation beside
zeroing for the core lesions (all networks, spared, single units) and their controls, ``tail_bins`` sets the
magnitude bins, ``preserve_alpha`` adds preservation networks at lower thresholds, and ``as_published`` adds the
published code's masking of the preserved networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fnet.intervene import MaskKind, control_kinds
from fnet.study.scheduler import STAGES, Job

__all__ = ["plan", "table_of", "lesion_controls", "preserve_controls"]


def lesion_controls(p: dict) -> dict[str, MaskKind]:
    """The preset's random controls of a lesion, by condition name (``count``, ``magnitude``, ...)."""
    return {name: kind for name, kind in control_kinds("lesion").items() if name in p["controls"]}


def preserve_controls(p: dict) -> dict[str, MaskKind]:
    """The preset's random controls of a preservation (``preserve_count``, ...): those of its lesion controls."""
    return {
        name: kind
        for name, kind in control_kinds("preserve").items()
        if name.removeprefix("preserve_") in p["controls"]
    }


@dataclass
class _Task:
    """One part of the plan: a task on one path, and where its networks come from."""

    task: str
    path: str  # finetune | zeroshot
    full: bool  # the task's own path: per-network lesions (lesion_each), preservation, normalised ICA
    label: str  # the report's part name: "sst2" or "sst2 (zero-shot)"
    scope: str  # names the networks' jobs: the task, "model", "<task>-zeroshot" or "<task>/run<r>"
    base: list[str]  # overrides every job of the part shares (the checkpoint)
    deps: list[str]  # ... and the jobs they need (the training run)
    stimuli: list[str] = field(default_factory=list)
    run: int | None = None  # the training run (v2 presets with training_runs), else None

    @property
    def stream(self) -> str:
        """The random controls' stream of this part: its task and training run."""
        return self.task if self.run is None else f"{self.task}/run{self.run}"

    @property
    def prefix(self) -> str:
        """What names its evaluate jobs: ``evaluate/<path>/<task>[/run<r>]``."""
        return f"evaluate/{self.path}/{self.task}" + ("" if self.run is None else f"/run{self.run}")


class _Planner:
    """Appends one preset's jobs to ``jobs`` (see :func:`plan`)."""

    def __init__(self, p: dict):
        self.p = p
        self.jobs: list[Job] = []
        self.model = [f"model={p['model']}"]
        self.K = int(p["n_networks"])
        self.seeds = range(int(p["seeds"]))
        self.core_seeds = range(int(p.get("core_seeds") or p["seeds"]))
        self.bins = f"[{','.join(str(b) for b in p['tail_bins'])}]" if p.get("tail_bins") else str(p["n_bins"])
        self.ablations = ["zero"] + list(p.get("ablations") or [])
        self.lesion_controls = lesion_controls(p)
        self.preserve_controls = preserve_controls(p)
        chosen = p.get("ablation_controls") or list(self.lesion_controls)
        self.ablated_controls = {c: k for c, k in self.lesion_controls.items() if c in chosen}

    def over(self, stage: str, task: str) -> list[str]:
        """The preset's overrides of a stage, then the task's own (task_overrides)."""
        return list(self.p[stage]) + list((self.p["task_overrides"].get(task) or {}).get(stage) or [])

    def has(self, name: str) -> bool:
        return any(j.name == name for j in self.jobs)

    # -- the parts -------------------------------------------------------------------------------------------
    def parts(self) -> list[_Task]:
        """Each task's fine-tuned (or zero-shot) part, its zero-shot part right after it where the preset asks."""
        p = self.p
        zeroshot = p["zeroshot_tasks"] if p["path"] == "finetune" else []
        todo = []
        for t in p["tasks"]:
            todo += [(t, p["path"], True)] + ([(t, "zeroshot", False)] if t in zeroshot else [])
        todo += [(t, "zeroshot", False) for t in zeroshot if t not in p["tasks"]]
        out = []
        for task, path, full in todo:
            stimuli = ["data=task", f"data.datasets.task.source=task:{task}"] if p["stimuli"] == "task" else []
            label = task if path == p["path"] else f"{task} (zero-shot)"
            if path == "zeroshot":
                scope = "model" if not stimuli else f"{task}-zeroshot"
                out.append(_Task(task, path, full, label, scope, [], [], stimuli))
                continue
            runs = p["runs_per_task"].get(task) or p.get("training_runs")
            for run in [None] if runs is None else range(int(runs)):
                train = f"train/{task}" + ("" if run is None else f"/run{run}")
                scope = task if run is None else f"{task}/run{run}"
                out.append(_Task(task, path, full, label, scope, ["ckpt_path={" + train + "}"], [train], stimuli, run))
        return out

    def train(self, part: _Task) -> None:
        name = part.deps[0] if part.deps else ""
        if part.path == "finetune" and not self.has(name):
            seed = [] if part.run is None else [f"seed={part.run}"]
            meta = {"task": part.task} if part.run is None else {"task": part.task, "run": part.run}
            self.jobs.append(
                Job(
                    name,
                    "train",
                    ["train.py"],
                    self.model + [f"task={part.task}"] + seed + self.over("train", part.task),
                    [],
                    meta,
                    "checkpoints/best-*.ckpt",
                )
            )

    def networks(self, part: _Task, k: int, variant: str = "raw", alpha: float | None = None) -> tuple[str, str]:
        """The analyze job of K=k (once per scope; at threshold ``alpha`` when given) and its scale job; returns
        their names."""
        variant = variant if alpha is None else f"{variant}_a{alpha:g}"
        a_name, s_name = f"analyze/{part.scope}/K{k}/{variant}", f"controls/{part.scope}/K{k}/{variant}"
        if self.has(a_name):
            return a_name, s_name
        meta = {"scope": part.scope, "K": k, "variant": variant} | ({} if part.run is None else {"run": part.run})
        extra = [self.p["normalised"]] if variant == "normalised" else []
        extra += [] if alpha is None else [f"networks.alpha={alpha:g}"]
        a_over = (
            self.model
            + part.base
            + part.stimuli
            + [f"ica.n_components={k}", "individual=false"]
            + extra
            + self.over("analyze", part.task)
        )
        self.jobs.append(
            Job(a_name, "analyze", ["analyze.py"], a_over, list(part.deps), meta, "networks/all_group.safetensors")
        )
        m = self.p["massive"]
        s_over = [
            "--networks",
            "{" + a_name + "}",
            "--out",
            "{out}",
            "--top-k",
            str(m["top_k"]),
            "--n-units",
            str(m["n_units"]),
            "--",
        ] + a_over
        self.jobs.append(
            Job(
                s_name,
                "controls",
                ["-m", "fnet.pipelines.study_controls"],
                s_over,
                list(part.deps) + [a_name],
                meta,
                "scale.safetensors",
            )
        )
        return a_name, s_name

    def evaluate(
        self, part: _Task, name: str, kind: str, inputs: tuple[str, ...], overrides: list[str], **meta: Any
    ) -> None:
        """One evaluate.py job with ``mask=kind``; ``inputs`` are the (analyze, scale) jobs its mask reads."""
        files = []
        if inputs:
            files.append("mask.networks_file={" + inputs[0] + "}")
        if len(inputs) > 1:
            m = self.p["massive"]
            files += [
                "mask.scale_file={" + inputs[1] + "}",
                f"mask.bins={self.bins}",
                f"mask.top_k={m['top_k']}",
                f"mask.n_units={m['n_units']}",
            ]
        ev_base = self.model + [f"task={part.task}"] + part.base + self.over("evaluate", part.task)
        run = {} if part.run is None else {"run": part.run}
        self.jobs.append(
            Job(
                f"{part.prefix}/{name}",
                "evaluate",
                ["evaluate.py"],
                ev_base + [f"mask={kind}"] + overrides + files,
                part.deps + list(inputs),
                {"task": part.label, "path": part.path, "scope": part.scope, **run, **meta},
            )
        )

    def controls(
        self,
        part: _Task,
        kinds: dict[str, MaskKind],
        prefix: str,
        networks: str,
        nets: tuple[str, str],
        seeds: range | None = None,
        ablation: str = "zero",
        **meta: Any,
    ) -> None:
        """Every seed of every random control in ``kinds`` for ``networks`` (with mean ablation: ``<kind>_mean``)."""
        stream = [f"mask.stream={part.stream}"] if self.p.get("streams") else []
        mean = [] if ablation == "zero" else [f"mask.ablation={ablation}"]
        for s in self.seeds if seeds is None else seeds:
            for condition, kind in kinds.items():
                inputs = nets if kind.needs_scale or mean else nets[:1]
                control = condition.removeprefix("preserve_") + ("" if not mean else f"_{ablation}")
                self.evaluate(
                    part,
                    prefix.format(control=control, seed=s),
                    kind.name,
                    inputs,
                    [f"mask.networks={networks}", f"mask.seed={s}"] + stream + mean,
                    condition=condition + ("" if not mean else f"_{ablation}"),
                    seed=s,
                    **meta,
                )

    def lesions(self, part: _Task, variant: str) -> None:
        """The lesion study of K networks: all lesioned, its controls; for raw networks the massive units spared,
        and on ``lesion_each`` tasks each network alone (with controls, spared) and each massive unit alone."""
        nets = self.networks(part, self.K, variant)
        v = {"variant": variant, "K": self.K}
        seeds = self.core_seeds if variant == "raw" else range(int(self.p.get("normalised_seeds") or self.p["seeds"]))
        for ab in self.ablations:
            sfx, mean = ("", []) if ab == "zero" else (f"_{ab}", [f"mask.ablation={ab}"])
            self.evaluate(
                part,
                f"{variant}/lesion{sfx}/all",
                "lesion",
                nets if mean else nets[:1],
                ["mask.networks=all"] + mean,
                condition=f"lesion{sfx}",
                target="all",
                **v,
            )
            kinds = self.lesion_controls if ab == "zero" else self.ablated_controls
            self.controls(part, kinds, variant + "/{control}/all/seed{seed}", "all", nets, seeds, ab, target="all", **v)
        if variant != "raw":
            return  # normalised networks: where they sit and what the all-networks lesion does
        for ab in self.ablations:
            sfx, mean = ("", []) if ab == "zero" else (f"_{ab}", [f"mask.ablation={ab}"])
            self.evaluate(
                part,
                f"raw/spared{sfx}/all",
                "spared",
                nets,
                ["mask.networks=all"] + mean,
                condition=f"spared{sfx}",
                target="all",
                **v,
            )
        each = range(self.K) if self.detailed(part) and part.task in self.p["lesion_each"] else []
        for k in each:
            self.evaluate(
                part,
                f"raw/lesion/net{k}",
                "lesion",
                nets[:1],
                [f"mask.networks={k}"],
                condition="lesion",
                target=f"net{k}",
                **v,
            )
            self.evaluate(
                part,
                f"raw/spared/net{k}",
                "spared",
                nets,
                [f"mask.networks={k}"],
                condition="spared",
                target=f"net{k}",
                **v,
            )
            self.controls(
                part, self.lesion_controls, f"raw/{{control}}/net{k}/seed{{seed}}", str(k), nets, target=f"net{k}", **v
            )
        for i in range(int(self.p["massive"]["n_units"])) if each else []:
            for ab in self.ablations:
                sfx, mean = ("", []) if ab == "zero" else (f"_{ab}", [f"mask.ablation={ab}"])
                self.evaluate(
                    part,
                    f"raw/unit{sfx}/{i}",
                    "unit",
                    nets,
                    [f"mask.unit={i}"] + mean,
                    condition=f"unit{sfx}",
                    target=f"unit{i}",
                    unit_rank=i,
                    **v,
                )

    def preservation(self, part: _Task, k: int, alpha: float | None = None) -> None:
        """Keep the union of K=k networks (at threshold ``alpha`` when given), against its random controls, and
        with the published masking when the preset asks."""
        nets = self.networks(part, k, alpha=alpha)
        at = "" if alpha is None else f"/a{alpha:g}"
        a = {} if alpha is None else {"alpha": alpha}
        self.evaluate(
            part,
            f"preserve/K{k}{at}/networks",
            "preserve",
            nets[:1],
            ["mask.networks=all"],
            condition="preserve",
            K=k,
            **a,
        )
        if self.p.get("as_published"):
            self.evaluate(
                part,
                f"preserve/K{k}{at}/as_published",
                "preserve",
                nets[:1],
                ["mask.networks=all", "mask.as_published=true"],
                condition="preserve_as_published",
                K=k,
                **a,
            )
        self.controls(
            part,
            self.preserve_controls,
            f"preserve/K{k}{at}/{{control}}/seed{{seed}}",
            "all",
            nets,
            self.core_seeds,
            K=k,
            **a,
        )

    def detailed(self, part: _Task) -> bool:
        """Whether the part gets per-network lesions and the preservation curve: its task's own path, and one of
        the first ``detail_runs`` training runs."""
        limit = self.p.get("detail_runs")
        return part.full and (limit is None or part.run is None or part.run < int(limit))

    def part(self, part: _Task) -> None:
        first = len(self.jobs)
        self.train(part)
        self.evaluate(part, "unmasked", "none", (), [], condition="unmasked")
        for variant in ["raw"] + (["normalised"] if self.p["normalised"] and part.full else []):
            self.lesions(part, variant)
        curve = self.detailed(part) and (not self.p.get("curve_tasks") or part.task in self.p["curve_tasks"])
        for k in self.p["preserve_K"] if curve else []:
            for alpha in [None] + list(self.p.get("preserve_alpha") or []):
                self.preservation(part, int(k), None if alpha is None else float(alpha))
        # stage by stage (stable), so each job's dependencies come before it
        self.jobs[first:] = sorted(self.jobs[first:], key=lambda j: STAGES.index(j.stage))


def plan(p: dict) -> list[Job]:
    """The jobs of a study preset (:func:`fnet.study.preset.load_preset`), task by task (in the preset's order),
    each task's stage by stage, so every dependency comes before its dependents and a runner finishes the first
    task first; with ``order: table``, every task's Table-5 jobs come before any Table-4 job, and those before
    Table 8's.

    Parameters
    ----------
    p : dict
        The preset.

    Returns
    -------
    list of Job
        The jobs, each after its dependencies.

    Examples
    --------
    >>> from fnet.study.preset import load_preset
    >>> jobs = plan(load_preset("tiny"))
    >>> [j.name for j in jobs][:3]
    ['train/sst2', 'analyze/sst2/K3/raw', 'controls/sst2/K3/raw']
    >>> magnitude = next(j for j in jobs if j.name.endswith("raw/magnitude/all/seed1"))
    >>> [o for o in magnitude.overrides if o.startswith(("mask=", "mask.seed", "mask.scale"))]
    ['mask=magnitude', 'mask.seed=1', 'mask.scale_file={controls/sst2/K3/raw}']
    """
    planner = _Planner(p)
    for part in planner.parts():
        planner.part(part)
    jobs = planner.jobs
    if p["order"] == "table":  # stable: dependencies still come first (a table's jobs need only earlier tables')
        jobs.sort(key=lambda j: table_of(j, planner.K))
    return jobs


def table_of(job: Job, n_networks: int) -> int:
    """0: training, the lesion study's networks and every all-networks job (Table 5); 1: per-network and
    single-unit lesions (Table 4); 2: preservation and its networks (Table 8)."""
    m = job.meta
    if job.stage in ("analyze", "controls"):
        return 0 if m.get("K") == n_networks else 2
    if job.stage == "train":
        return 0
    if str(m.get("condition", "")).startswith("preserve"):
        return 2
    return 0 if m.get("target", "all") == "all" else 1
