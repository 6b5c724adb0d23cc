"""fnet.study.compose: one report from committed study reports, each task whole from one source, never mixed."""

import csv
import re

import pytest

from fnet.study.cli import main
from fnet.study.compose import compose_report, part_name, plan_parts, read_source
from fnet.study.plan import plan
from fnet.study.preset import load_preset
from fnet.study.render import render_report

SETS = ["tasks=[sst2,ag_news]", "zeroshot_tasks=[sst2]"]


def _row(task, condition, score, ci, *, variant="raw", target="all", K=3, n_jobs=1, base=0.9):
    unmasked = condition == "unmasked"
    return {
        "task": task,
        "variant": "" if unmasked else variant,
        "condition": condition,
        "target": None if unmasked else target,
        "K": None if unmasked else K,
        "metric": "accuracy",
        "score": score,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n_rows": 200,
        "n_jobs": n_jobs,
        "n_neurons": 64,
        "n_masked": None if unmasked else 12.0,
        "n_kept": None,
        "unmasked": base,
        "unmasked_ci_low": base - 0.05,
        "unmasked_ci_high": base + 0.05,
        "chance": 0.5,
        "unmasked_at_chance": False,
        "paper": None,
    }


def _effect(task, a, b, diff, ci, *, n_a=1, n_b=1):
    return {
        "task": task,
        "variant": "raw",
        "target": "all",
        "K": 3,
        "a": a,
        "b": b,
        "metric": "accuracy",
        "diff": diff,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n_rows": 200,
        "n_a": n_a,
        "n_b": n_b,
    }


def _source(folder, preset, finished, planted, *, machine, code="this"):
    """A committed study report (as render_report writes it) whose jobs of the parts in ``finished`` are done and
    the rest pending; ``planted``: part -> (unmasked, lesion, count-matched, paired count - lesion diff, its CI);
    ``code``: the code key it records ("this": this checkout's, None: none)."""
    if code == "this":
        from fnet.study.scheduler import code_key

        code = code_key()
    jobs = plan(preset)
    parts = plan_parts(jobs)
    done = {j.name for p in finished for j in parts[p]}
    summary, effects = [], []
    for part, (base, lesion, count, diff, ci) in planted.items():
        summary += [
            _row(part, "unmasked", base, (base - 0.05, base + 0.05), base=base),
            _row(part, "lesion", lesion, (lesion - 0.05, lesion + 0.05), base=base),
            _row(part, "count", count, (count - 0.02, count + 0.02), n_jobs=2, base=base),
        ]
        effects += [
            _effect(part, "unmasked", "lesion", base - lesion, (base - lesion - 0.05, base - lesion + 0.05)),
            _effect(part, "count", "lesion", diff, ci, n_a=2),
        ]
    rows = [
        {
            "name": j.name,
            "stage": j.stage,
            "status": "skipped" if j.name in done else "pending",
            "key": f"{machine}-{i}",
            "seconds": 60.0,
            "finished": "2026-12-02T00:00:00",
        }
        for i, j in enumerate(jobs)
    ]
    scope = {p: next(j.meta["scope"] for j in parts[p] if j.stage == "analyze") for p in planted}
    render_report(
        folder,
        preset=preset,
        summary=summary,
        effect_rows=effects,
        jobs=rows,
        centres={f"{scope[p]} raw": 20.0 + i for i, p in enumerate(planted)},
        massive=[
            {"networks of": f"{scope[p]} K=3 raw", "unit": 7, "in networks": 2, "network ids": "0, 1", "layers": "1"}
            for p in planted
        ],
        overlap=[],
        machines=machine,
        runs_lines=[],
        layers_png=None,
        codes=[(code, "this source's jobs")] if code else [],
    )
    return folder


@pytest.fixture
def sources(tmp_path):
    preset = load_preset("tiny", SETS)
    # a: sst2 and its zero-shot path finished; ag_news half done, with other numbers that must not leak in
    a = _source(
        tmp_path / "a",
        preset,
        ["sst2", "sst2 (zero-shot)"],
        {
            "sst2": (0.90, 0.55, 0.88, 0.33, (0.25, 0.41)),
            "sst2 (zero-shot)": (0.80, 0.70, 0.78, 0.08, (0.01, 0.15)),
            "ag_news": (0.11, 0.11, 0.11, 0.0, (-0.1, 0.1)),
        },
        machine="machine A",
    )
    b = _source(
        tmp_path / "b", preset, ["ag_news"], {"ag_news": (0.85, 0.80, 0.70, -0.10, (-0.18, -0.03))}, machine="machine B"
    )
    return preset, a, b


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_task_comes_whole_from_the_source_that_finished_it_and_tallies_are_recounted(sources, tmp_path):
    preset, a, b = sources
    out = compose_report(preset, [(a, None), (b, None)], tmp_path / "out")
    assert out["parts"] == {"sst2": a, "sst2 (zero-shot)": a, "ag_news": b}
    summary = _csv(tmp_path / "out" / "summary.csv")
    ag = [(r["condition"], float(r["score"])) for r in summary if r["task"] == "ag_news"]
    assert ag == [("unmasked", 0.85), ("lesion", 0.80), ("count", 0.70)]  # b's only, never a's half-done 0.11
    assert len(summary) == 9 and len(_csv(tmp_path / "out" / "effects.csv")) == 6
    jobs = _csv(tmp_path / "out" / "jobs.csv")
    assert len(jobs) == len(plan(preset)) and {r["status"] for r in jobs} == {"skipped"}
    assert {r["source"] for r in jobs if r["part"] == "ag_news"} == {"../b"}
    assert {r["key"].split("-")[0] for r in jobs if r["part"] == "ag_news"} == {"machine B"}
    text = (tmp_path / "out" / "report.md").read_text()
    # sst2 and its zero-shot path hurt more than count-matched, ag_news less: recounted over sources
    assert "Lesions of all networks together vs count-matched random lesions: 2 of 3 hurt more, 1 hurt less" in text
    assert re.search(r"ag_news, all networks lesioned \(12 neurons\): 0\.800.*hurts less", text)
    assert "machine A" in text and "machine B" in text and "## Sources" in text
    assert "sst2 raw: 20.00" in text and "ag_news raw: 20.00" in text  # centres of the parts taken, from their source
    assert "ag_news raw: 22.00" not in text  # a's ag_news centre is not b's
    assert (tmp_path / "out" / "layers.png").exists()
    files = sorted((tmp_path / "out").iterdir())
    before = {f.name: f.read_bytes() for f in files}
    compose_report(preset, [(a, None), (b, None)], tmp_path / "out")  # composed again: the same bytes
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "out").iterdir())} == before


def test_read_source_round_trips_types_and_one_seed_controls(sources):
    _, a, _ = sources
    src = read_source(a)
    assert src["settings"]["tasks"] == ["sst2", "ag_news"] and src["settings"]["preserve_K"] == [3]
    lesion = next(r for r in src["summary"] if r["task"] == "sst2" and r["condition"] == "lesion")
    assert lesion["K"] == 3 and lesion["target"] == "all" and lesion["unmasked_at_chance"] is False
    unmasked = next(r for r in src["summary"] if r["task"] == "sst2" and r["condition"] == "unmasked")
    assert unmasked["target"] is None and unmasked["K"] is None and unmasked["variant"] == ""
    effects = {(e["task"], e["a"]): e for e in src["effects"]}
    assert effects[("sst2", "count")]["one_seed"] is False and effects[("sst2", "unmasked")]["one_seed"] is False
    assert src["massive"][0]["unit"] == "7" and src["machines"] == "machine A"


def test_an_older_report_without_n_neurons_still_says_what_share_a_preservation_kept(sources, tmp_path):
    preset, a, b = sources
    rows = _csv(a / "summary.csv")
    rows.append(dict(rows[1], condition="preserve", target="", K="3", n_masked="54.0", n_kept="10.0"))
    with open(a / "summary.csv", "w", newline="") as handle:  # as written before summary.csv had n_neurons
        writer = csv.DictWriter(handle, fieldnames=[c for c in rows[0] if c != "n_neurons"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    src = read_source(a)
    assert next(r for r in src["summary"] if r["condition"] == "preserve")["n_neurons"] == 64.0
    assert {r["n_neurons"] for r in src["summary"] if r["condition"] != "preserve"} == {None}
    compose_report(preset, [(a, None), (b, None)], tmp_path / "out")
    assert "only the K=3 networks kept (10 neurons, 15.6% of neurons)" in (tmp_path / "out" / "report.md").read_text()


def test_a_part_is_never_taken_from_a_source_that_did_not_finish_it_or_ran_other_settings(sources, tmp_path):
    preset, a, b = sources
    with pytest.raises(ValueError, match=r"no source finished the parts \['ag_news'\]"):
        compose_report(preset, [(a, None)], tmp_path / "o1")
    with pytest.raises(ValueError, match=r"part 'ag_news': .* finished 0 of its \d+ jobs"):
        compose_report(preset, [(a, ["ag_news"]), (b, None)], tmp_path / "o2")
    with pytest.raises(
        ValueError, match=r"not parts of the plan; valid parts: \['ag_news', 'sst2', 'sst2 \(zero-shot\)'\]"
    ):
        compose_report(preset, [(a, ["qqp"]), (b, None)], tmp_path / "o3")
    other = _source(
        tmp_path / "c",
        load_preset("tiny", SETS + ["seeds=3"]),
        ["ag_news"],
        {"ag_news": (0.85, 0.80, 0.70, -0.10, (-0.18, -0.03))},
        machine="machine C",
    )
    with pytest.raises(ValueError, match=r"part 'ag_news': .* ran other settings \(its plan has"):
        compose_report(preset, [(a, None), (other, ["ag_news"])], tmp_path / "o4")
    with pytest.raises(FileNotFoundError, match="not a committed study report"):
        compose_report(preset, [(tmp_path, None)], tmp_path / "o5")


def test_explicit_parts_win_and_the_command_line_composes(sources, tmp_path, capsys):
    preset, a, b = sources
    assert part_name("sst2-zeroshot") == "sst2 (zero-shot)"
    out = compose_report(preset, [(a, None), (b, ["ag_news"])], tmp_path / "x")
    assert out["parts"]["ag_news"] == b
    assert main(["tiny", *SETS, "--compose", str(a)]) == 2  # no --report-dir
    assert "--report-dir" in capsys.readouterr().err
    assert (
        main(["tiny", *SETS, "--compose", str(a), "--compose", f"ag_news={b}", "--report-dir", str(tmp_path / "cli")])
        == 0
    )
    assert "ag_news  from " + str(b) in capsys.readouterr().out
    assert main(["tiny", *SETS, "--compose", str(a), "--report-dir", str(tmp_path / "bad")]) == 2
    assert "no source finished the parts ['ag_news']" in capsys.readouterr().err
