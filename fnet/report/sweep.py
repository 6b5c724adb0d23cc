"""Aggregate a sweep of ``evaluate.py`` jobs into paper-style tables and a preservation curve.

``python -m fnet.report.sweep <sweep_dir> [--out DIR]`` (or :func:`aggregate`) reads every ``result.json`` under the
sweep folder (and every ``failure.json``, listed as failed jobs; an ``analyze.py`` job, which writes its report and
networks instead of a result, is listed as finished with its K and report, ``analyses.csv``) and writes:

* ``summary.md`` / ``summary.csv`` -- one row per task x mask condition (``none``, ``lesion`` of a network,
  ``random`` matched control, ``random_fraction``, ``preserve`` K, ...): the mean score over the condition's jobs
  (seeds) with a 95 % CI (t interval over seeds when there are several, else the job's own CI), neuron counts
  and fractions, the unmasked score of the same rows and the change, and ``unmasked_above_chance`` -- rows whose
  unmasked model is not above chance are marked, since a lesion cannot show anything there; ``netset`` is the
  content hash of the NetworkSet a job used: jobs with different networks are never pooled, and when a sweep folder
  mixes several, the condition names say which;
* ``failures.csv`` (and a section in summary.md) -- the failed jobs with their overrides and error;
* ``preservation_curve.png`` -- metric vs K for ``preserve`` rows (one line per task, the preserved-neuron fraction
  written at each point, the unmasked score and chance level as reference lines).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.intervene import MASKS
from fnet.report import markdown_table, provenance_header

__all__ = [
    "collect",
    "collect_analyses",
    "condition_of",
    "summarize",
    "aggregate",
    "plot_preservation_curve",
    "mean_ci",
    "main",
]

#: the range of bounded metrics (t intervals over few seeds are clipped to it)
METRIC_RANGE = {"accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "exact_match": (0.0, 1.0), "mcc": (-1.0, 1.0)}
SUMMARY_COLUMNS = [
    "task",
    "condition",
    "mode",
    "networks",
    "K",
    "n_seeds",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "n_masked",
    "fraction_masked",
    "unmasked",
    "delta",
    "unmasked_above_chance",
    "chance",
    "n",
    "netset",
]


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------
def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    try:
        import yaml

        return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]
    except Exception:  # noqa: BLE001 - a broken overrides file must not stop aggregation
        return []


def collect(sweep_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """``(results, failures)``: every result.json / failure.json below ``sweep_dir`` (with ``job_dir`` added)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    results, failures = [], []
    for path in sorted(sweep_dir.rglob("result.json")):
        row = json.loads(path.read_text())
        row["job_dir"] = str(path.parent)
        results.append(row)
    for path in sorted(sweep_dir.rglob("failure.json")):
        record = json.loads(path.read_text())
        overrides = record.get("overrides") or _job_overrides(path.parent)
        failures.append(
            {
                "job_dir": str(path.parent),
                "overrides": " ".join(overrides),
                "error": str(record.get("error", "")).splitlines()[0][:300] if record.get("error") else "",
            }
        )
    return results, failures


#: what a finished analyze.py job writes last, by analysis (``analysis=networks``, ``analysis=pos``)
ANALYSIS_REPORTS = {"report.md": "networks", "pos_report.md": "pos"}
ANALYSIS_COLUMNS = ["job_dir", "overrides", "analysis", "K", "datasets", "mean network size", "report"]


def collect_analyses(sweep_dir: str | Path) -> list[dict]:
    """Every finished ``analyze.py`` job below ``sweep_dir``: a folder with its report (``report.md`` beside
    ``summary.json``, or ``pos_report.md``), which an analysis writes instead of ``result.json``. One row each:
    folder, overrides, analysis, K and data sets (``summary.json``), mean network size, report path."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for name, analysis in ANALYSIS_REPORTS.items():
        for report in sorted(sweep_dir.rglob(name)):
            job = report.parent
            if analysis == "networks" and not (job / "summary.json").is_file():
                continue  # some other report.md (a sweep's own summary is summary.md)
            row = {
                "job_dir": str(job),
                "overrides": " ".join(_job_overrides(job)),
                "analysis": analysis,
                "K": None,
                "datasets": "",
                "mean network size": None,
                "report": str(report),
            }
            if analysis == "networks":
                try:
                    datasets = json.loads((job / "summary.json").read_text()).get("datasets") or {}
                except (OSError, ValueError):
                    datasets = {}
                sizes = [s for d in datasets.values() for s in (d.get("sizes") or [])]
                first = next(iter(datasets.values()), {})
                row.update(
                    K=len(first.get("sizes") or []) or None,
                    datasets=", ".join(datasets),
                    **{"mean network size": round(float(np.mean(sizes)), 1) if sizes else None},
                )
            rows.append(row)
    return sorted(rows, key=lambda r: r["job_dir"])


def _networks_text(networks: Any) -> str:
    if networks is None:
        return ""
    if isinstance(networks, (list, tuple)):
        return ",".join(str(n) for n in networks)
    return str(networks)


def condition_of(row: dict) -> tuple[str, str, str, Any]:
    """``(condition label, mode, networks text, K)`` of a result row; jobs differing only in seed share it."""
    mask = row.get("mask") or {}
    mode = row.get("mask_mode") or mask.get("mode") or "none"
    K = row.get("K")
    networks = _networks_text(mask.get("network_ids") if mask.get("network_ids") is not None else mask.get("networks"))
    kind = MASKS.get(mode)
    if kind is None:  # a result written by a mode this code does not know
        return mode, mode, networks, K
    if not kind.per_network:
        networks = ""
    subset = "" if networks in ("", "all") or _all_networks(mask, K) else f" networks {networks}"
    label = kind.describe.format(
        networks=networks,
        K=K,
        k="" if K is None else f" (K={K})",
        subset=subset,
        disjoint=" (disjoint)" if mask.get("exclude_reference") else "",
        fraction=float(mask.get("fraction_requested") or 0),
        value=mask.get("value"),
        unit=(mask.get("meta") or {}).get("unit_rank", mask.get("unit")),
    )
    return label, mode, networks, K


def _all_networks(mask: dict, K: Any) -> bool:
    ids = mask.get("network_ids")
    return K is not None and isinstance(ids, list) and len(ids) == int(K)


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval of the mean over jobs (seeds); a single value has no interval (nan, nan)."""
    from scipy import stats

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if values.size == 1:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return (mean, mean - half, mean + half)


def _mean(values: Sequence[Any]) -> float | None:
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def summarize(results: Sequence[dict]) -> list[dict]:
    """Summary rows (see module docstring), sorted by task then condition."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        label, mode, networks, K = condition_of(row)
        netset = (row.get("mask") or {}).get("netset") or ""
        groups.setdefault((row.get("task"), label, mode, networks, K, row.get("metric"), netset), []).append(row)
    several = len({key[-1] for key in groups if key[-1]}) > 1  # jobs used different NetworkSets: say which
    unmasked_by_task: dict[str, dict] = {}
    for (task, _, mode, _, _, _, _), rows in groups.items():
        if mode == "none":
            unmasked_by_task.setdefault(task, rows[0])
    summary = []
    for (task, label, mode, networks, K, metric, netset), rows in groups.items():
        if several and netset:
            label = f"{label} [networks {netset[:6]}]"
        scores = [r.get("score") for r in rows]
        if len(rows) > 1:
            mean, lo, hi = mean_ci(scores)
            low_bound, high_bound = METRIC_RANGE.get(metric, (-math.inf, math.inf))
            lo, hi = max(lo, low_bound), min(hi, high_bound)  # a t interval over 2-3 seeds can leave the range
        else:
            mean = scores[0]
            lo, hi = (rows[0].get("ci") or [None, None])[:2]
        mask_stats = [r.get("mask") or {} for r in rows]
        baseline = next((r.get("baseline") for r in rows if r.get("baseline")), None)
        unmasked_row = unmasked_by_task.get(task)
        if mode == "none":
            unmasked, above = mean, rows[0].get("above_chance")
        elif baseline is not None:
            unmasked, above = baseline.get("score"), baseline.get("above_chance")
        elif unmasked_row is not None:
            unmasked, above = unmasked_row.get("score"), unmasked_row.get("above_chance")
        else:
            unmasked, above = None, None
        primary = (rows[0].get("metrics") or {}).get(metric) or {}
        summary.append(
            {
                "task": task,
                "condition": label,
                "mode": mode,
                "networks": networks,
                "K": K,
                "n_seeds": len(rows),
                "metric": metric,
                "mean": mean,
                "ci_low": lo,
                "ci_high": hi,
                "n_masked": _mean([m.get("n_masked") for m in mask_stats]),
                "fraction_masked": _mean([m.get("fraction") for m in mask_stats]),
                "unmasked": unmasked,
                "delta": None if unmasked is None or mean is None or mode == "none" else mean - unmasked,
                "unmasked_above_chance": above,
                "chance": primary.get("chance"),
                "n": rows[0].get("n"),
                "seeds": sorted({r.get("seed") for r in rows if r.get("seed") is not None}),
                "netset": netset or None,
            }
        )

    def order(row: dict) -> tuple:
        mode_rank = MASKS[row["mode"]].order if row["mode"] in MASKS else max(k.order for k in MASKS.values()) + 1
        nets = row["networks"]
        first_net = int(nets.split(",")[0]) if nets and nets.split(",")[0].lstrip("-").isdigit() else -1
        return (str(row["task"]), mode_rank, row["K"] if row["K"] is not None else -1, first_net, row["condition"])

    return sorted(summary, key=order)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------
def _display_rows(summary: Sequence[dict]) -> list[dict]:
    out = []
    for row in summary:
        shown = {k: row.get(k) for k in SUMMARY_COLUMNS}
        above = row.get("unmasked_above_chance")
        shown["unmasked_above_chance"] = {True: "yes", False: "NO (at chance)", None: "?"}[above]
        for key in ("mean", "ci_low", "ci_high", "unmasked", "delta", "chance", "fraction_masked"):
            value = shown.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                shown[key] = None
        out.append(shown)
    return out


def plot_preservation_curve(summary: Sequence[dict], path: str | Path, dpi: int = 100) -> Path | None:
    """Metric vs K of the ``preserve`` rows, one line per task; the preserved fraction of neurons is written at
    each point, the unmasked score (dashed) and chance (dotted) are drawn per task. None if no preserve rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in summary if r["mode"] == "preserve" and r["K"] is not None and r["mean"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    tasks = sorted({r["task"] for r in rows})
    colors = {task: f"C{i}" for i, task in enumerate(tasks)}
    for task in tasks:
        points = sorted((r for r in rows if r["task"] == task), key=lambda r: r["K"])
        ks = [p["K"] for p in points]
        means = np.array([p["mean"] for p in points], dtype=float)
        lo = np.array([p["ci_low"] if p["ci_low"] is not None else np.nan for p in points], dtype=float)
        hi = np.array([p["ci_high"] if p["ci_high"] is not None else np.nan for p in points], dtype=float)
        yerr = np.vstack([np.nan_to_num(means - lo), np.nan_to_num(hi - means)])
        ax.errorbar(
            ks, means, yerr=yerr, marker="o", capsize=3, color=colors[task], label=f"{task} ({points[0]['metric']})"
        )
        for p in points:
            if p.get("fraction_masked") is not None:
                ax.annotate(
                    f"{1 - p['fraction_masked']:.1%}",
                    (p["K"], p["mean"]),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=7,
                    color=colors[task],
                )
        unmasked = next((p["unmasked"] for p in points if p.get("unmasked") is not None), None)
        if unmasked is not None:
            ax.axhline(unmasked, linestyle="--", linewidth=1, color=colors[task])
        chance = next((p["chance"] for p in points if p.get("chance") is not None), None)
        if chance is not None:
            ax.axhline(chance, linestyle=":", linewidth=1, color=colors[task])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["K"] for r in rows}), [str(k) for k in sorted({r["K"] for r in rows})])
    ax.set_xlabel("K (ICA components; only their networks' neurons are kept)")
    ax.set_ylabel("score")
    ax.set_title("Preservation: score vs K (labels: fraction of neurons kept; --- unmasked, ··· chance)", fontsize=9)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Collect, summarise and write the tables (and the preservation curve). Returns the summary rows, the
    failures and the written paths."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    results, failures = collect(sweep_dir)
    analyses = collect_analyses(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    paths: dict[str, Path] = {}
    kinds = (
        f" ({len(results)} evaluate, {len(analyses)} analyze)"
        if results and analyses
        else (f" ({len(analyses)} analyze)" if analyses else "")
    )
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(results) + len(analyses)} finished jobs{kinds}, {len(failures)} failed.",
        "",
    ]
    if results:
        first = results[0].get("provenance") or {}
        lines += [provenance_header({k: first.get(k) for k in ("model", "signal", "fnet_version")}), ""]
        lines += [
            "Score = mean over the condition's jobs (seeds) with a 95 % CI (t interval over seeds; a single "
            "job shows its own CI: Wilson for accuracy, bootstrap otherwise). `unmasked` is the unmasked model "
            "on the same rows; `unmasked_above_chance` = its CI lower bound exceeds the chance level "
            "(majority-class rate for accuracy) -- rows marked NO cannot show a lesion effect.",
            "",
        ]
        lines.append(markdown_table(_display_rows(summary), SUMMARY_COLUMNS))
        lines.append("")
        paths["csv"] = _write_csv(summary, SUMMARY_COLUMNS, out_dir / "summary.csv")
    if analyses:
        lines += [
            "## Analysis jobs",
            "",
            "Each job's networks, figures and tables are in its folder (`report`).",
            "",
            markdown_table(analyses, ANALYSIS_COLUMNS),
            "",
        ]
        paths["analyses_csv"] = _write_csv(analyses, ANALYSIS_COLUMNS, out_dir / "analyses.csv")
    if failures:
        lines += ["## Failed jobs", "", markdown_table(failures, ["job_dir", "overrides", "error"]), ""]
        paths["failures_csv"] = _write_csv(failures, ["job_dir", "overrides", "error"], out_dir / "failures.csv")
    curve = plot_preservation_curve(summary, out_dir / "preservation_curve.png")
    if curve is not None:
        paths["curve"] = curve
        lines += ["![preservation curve](preservation_curve.png)", ""]
    paths["markdown"] = out_dir / "summary.md"
    paths["markdown"].write_text("\n".join(lines))
    return {"summary": summary, "failures": failures, "results": results, "analyses": analyses, "paths": paths}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnet.report.sweep SWEEP_DIR [--out DIR]``: tables of a sweep's results; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fnet.report.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun folder (or any folder) holding result.json files")
    parser.add_argument("--out", default=None, help="where to write the tables (default: the sweep folder)")
    args = parser.parse_args(argv)
    out = aggregate(args.sweep_dir, args.out)
    print(out["paths"]["markdown"].read_text())
    print("wrote", ", ".join(str(p) for p in out["paths"].values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
