"""A study's explorer page: its headline figures, then its tables, then a card per network of every network set
the study lesioned, with that network's lesion effects and their CIs.

:func:`write_study_explorer` is called by both report writers (:func:`fnet.study.render.write_report`, v1, and
:func:`fnet.study.render_pooled.write_pooled_report`, v2) with what they computed; it reads the analyze jobs'
network files and ``networks/descriptions.json`` (what each network responds to, written by ``analyze.py``) and
the controls jobs' ``controls.json`` (massive units), and lays them out with :mod:`fnet.report.explorer`.
A composed report (``--compose``) has no job folders, hence no explorer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from fnet.networks import NetworkSet, describe
from fnet.report.explorer import effect_row, image_data_uri, network_card, render_explorer
from fnet.study.report import FINISHED

__all__ = ["write_study_explorer", "csv_table", "EFFECT_LABELS"]

#: how a card names a comparison ``a - b`` of a network's lesion
EFFECT_LABELS = {
    ("unmasked", "lesion"): "unmasked − lesioned: what the lesion costs",
    ("count", "lesion"): "count-matched random − lesioned",
    ("magnitude", "lesion"): "magnitude-matched random − lesioned",
    ("spared", "lesion"): "massive units spared − lesioned",
    ("unmasked", "spared"): "unmasked − lesioned with massive units spared",
    ("count", "spared"): "count-matched random − lesioned with massive units spared",
    ("lesion_mean", "lesion"): "mean-ablated − zeroed",
    ("unmasked", "preserve"): "unmasked − only the networks kept",
    ("preserve", "preserve_count"): "networks kept − count-matched random kept",
    ("preserve", "preserve_magnitude"): "networks kept − magnitude-matched random kept",
}
EFFECTS_NOTE = (
    "a − b on the same held-out rows; 95 % CI from the bootstrap over rows and random-control seeds "
    "(red: the CI excludes zero). A positive value against a random control: the network hurts more."
)


def _folder_of(records: Sequence[dict], name: str) -> Path | None:
    rec = next((r for r in records if r.get("name") == name and r.get("status") in FINISHED), None)
    return Path(rec["folder"]) if rec else None


def _descriptions(record: dict) -> tuple[NetworkSet, list[dict] | None, list[int]]:
    """The analyze job's networks, its descriptions of them (None when the job predates them) and massive units."""
    folder = Path(record["folder"])
    nets = NetworkSet.load(folder / record["output"])
    path = folder / "networks" / "descriptions.json"
    if path.is_file():
        entry = json.loads(path.read_text())["sets"].get("all") or {}
        return nets, entry.get("networks"), list(entry.get("massive_units") or [])
    return nets, None, []


def _effects(
    rows: Sequence[dict], task: str, variant: str, K: Any, target: str, run: Any = None, prefix: str = ""
) -> list[dict]:
    out = []
    for r in rows:
        if (
            r.get("task") == task
            and r.get("variant") == variant
            and str(r.get("target")) == target
            and str(r.get("K")) == str(K)
            and (run is None or str(r.get("run")) == str(run))
        ):
            row = dict(r, n_rows=r.get("n_rows", r.get("n")))
            if row.get("ci_low_corrected") in (None, ""):
                row.pop("ci_low_corrected", None)
                row.pop("ci_high_corrected", None)
            label = EFFECT_LABELS.get((r["a"], r["b"]), f"{r['a']} − {r['b']}")
            out.append(effect_row(prefix + label, row))
    return out


def _cards(records: Sequence[dict], effect_rows: Sequence[dict], preset: dict) -> list[dict]:
    """One page section per analyze job of K = ``n_networks`` (the networks the study lesions one by one)."""
    labels = {}
    for r in records:
        m = r.get("meta") or {}
        if r.get("stage") == "evaluate" and m.get("scope"):
            labels.setdefault(m["scope"], m.get("task"))
    sets = []
    for rec in records:
        m = rec.get("meta") or {}
        if (
            rec.get("stage") != "analyze"
            or rec.get("status") not in FINISHED
            or not rec.get("output")
            or m.get("K") != preset.get("n_networks")
        ):
            continue
        nets, described, massive = _descriptions(rec)
        controls = _folder_of(records, rec["name"].replace("analyze/", "controls/", 1))
        if controls is not None and (controls / "controls.json").is_file():
            massive = json.loads((controls / "controls.json").read_text()).get("units") or massive
        if described is None:
            described = describe(nets, massive=massive)
        task, run = labels.get(m["scope"], m["scope"]), m.get("run")
        cards = []
        for d in described:
            effects = _effects(effect_rows, task, m.get("variant", "raw"), m["K"], f"net{d['network']}", run)
            cards.append(
                network_card(
                    d,
                    set_id=_slug(rec["name"]),
                    width=nets.width,
                    effects=effects,
                    effects_note=EFFECTS_NOTE if effects else "",
                    massive_units=massive,
                    no_examples="this analyze job predates time courses: rerun it for its top contexts",
                )
            )
        whole = _effects(effect_rows, task, m.get("variant", "raw"), m["K"], "all", run, "all networks: ")
        if m.get("variant", "raw") == "raw":
            whole += [
                e
                for K in preset.get("preserve_K") or []
                for e in _effects(effect_rows, task, "raw", K, "None", run, f"K = {K}: ")
            ]
        tables = (
            [
                {
                    "id": _slug(rec["name"]) + "-effects",
                    "title": "All networks: lesion and preservation",
                    "columns": ["comparison", "difference", "95 % CI low", "95 % CI high", "rows"],
                    "rows": [
                        {
                            "comparison": e["label"],
                            "difference": e["diff"],
                            "95 % CI low": e["ci_low"],
                            "95 % CI high": e["ci_high"],
                            "rows": e["n_rows"],
                        }
                        for e in whole
                    ],
                }
            ]
            if whole
            else []
        )
        sets.append(
            {
                "id": _slug(rec["name"]),
                "title": f"{task}: K = {m['K']}, {m.get('variant', 'raw')} networks"
                + (f" (run {run})" if run is not None else ""),
                "note": f"Networks of job {rec['name']} ({rec['output']}); massive units "
                f"{', '.join(map(str, massive)) or 'none'}.",
                "tables": tables,
                "cards": cards,
            }
        )
    return sets


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def csv_table(ident: str, title: str, rows: Sequence[dict], columns: Sequence[str]) -> dict:
    """A table of the page with the rows and columns of one of the report's CSVs (columns no row fills are left
    out)."""
    kept = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    return {"id": ident, "title": title, "columns": kept, "rows": [{c: r.get(c) for c in kept} for r in rows]}


def write_study_explorer(
    out: str | Path,
    *,
    preset: dict,
    records: Sequence[dict],
    effect_rows: Sequence[dict],
    tables: Sequence[dict],
    figures: Sequence[Path | None],
    title: str,
    meta: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``explorer.html`` into ``out``: ``figures`` (the report's PNGs, embedded) first, then ``tables``
    (``{"id", "title", "columns", "rows"}``, e.g. the report's CSVs), then the network cards with their lesion
    effects from ``effect_rows`` (``effects.csv``'s rows). Returns the page's path."""
    shown = [
        {"title": Path(p).stem.replace("_", " "), "src": image_data_uri(p), "caption": Path(p).name}
        for p in figures
        if p and image_data_uri(p)
    ]
    settings = [
        ("preset", f"conf/study/{preset.get('name')}.yaml"),
        ("model", str(preset.get("model"))),
        ("path", str(preset.get("path"))),
        ("tasks", ", ".join(map(str, preset.get("tasks") or []))),
        ("networks lesioned", f"K = {preset.get('n_networks')}"),
    ]
    page = {
        "title": title,
        "subtitle": "Headline figures, then the tables (as in the report's CSVs), then a card "
        "per network with what it responds to and what lesioning it costs.",
        "meta": settings + list(meta),
        "figures": shown,
        "tables": list(tables),
        "sets": _cards(records, effect_rows, preset),
    }
    return render_explorer(page, Path(out) / "explorer.html")
