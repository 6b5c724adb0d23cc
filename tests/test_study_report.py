"""fnet.study.report on synthetic result.json files: planted effects are stated, a chance-level task is flagged."""

import csv
import json
import re

import pytest

from fnet.study.render import write_report
from fnet.study.report import paper_tables, statements

N_ROWS = 400


def _job(root, name, meta, score, ci, *, chance=0.5, n_masked=0, n_kept=None, n_neurons=1000, predictions=True):
    """A finished evaluate job; its predictions are right on the first score x 400 rows (nested sets, so paired
    differences are known: a - b = score_a - score_b, from rows that differ only)."""
    folder = root / "evaluate" / name
    folder.mkdir(parents=True)
    mask = {"n_masked": n_masked, "n_neurons": n_neurons}
    if n_kept is not None:
        mask["n_preserved"] = n_kept
    result = {
        "task": meta["task"],
        "metric": "accuracy",
        "score": score,
        "ci": list(ci),
        "n": N_ROWS,
        "mask": mask,
        "chance": {"majority": chance, "uniform": 0.5},  # as evaluate.py writes it
        "metrics": {"accuracy": {"value": score, "ci_low": ci[0], "ci_high": ci[1], "chance": chance}},
    }
    (folder / "result.json").write_text(json.dumps(result))
    if predictions:
        right = round(score * N_ROWS)
        with open(folder / "predictions.jsonl", "w") as handle:
            for i in range(N_ROWS):
                handle.write(
                    json.dumps({"index": i, "pred": i % 2 if i < right else 1 - i % 2, "target": i % 2}) + "\n"
                )
    return {"name": name, "stage": "evaluate", "status": "ran", "folder": str(folder), "meta": meta, "seconds": 2.0}


def _planted(root):
    recs = []
    sst = {"task": "sst2", "variant": "raw", "K": 10}
    recs.append(_job(root, "u", {"task": "sst2", "condition": "unmasked"}, 0.90, (0.86, 0.93)))
    recs.append(_job(root, "l", dict(sst, condition="lesion", target="all"), 0.55, (0.50, 0.60), n_masked=180))
    for s, v in enumerate([0.88, 0.89, 0.87, 0.90, 0.88]):  # count control: barely hurts
        recs.append(
            _job(
                root, f"c{s}", dict(sst, condition="count", target="all", seed=s), v, (v - 0.04, v + 0.04), n_masked=180
            )
        )
    for s, v in enumerate([0.56, 0.58, 0.54, 0.57, 0.55]):  # magnitude control: hurts as much as the networks
        recs.append(
            _job(
                root,
                f"m{s}",
                dict(sst, condition="magnitude", target="all", seed=s),
                v,
                (v - 0.05, v + 0.05),
                n_masked=180,
            )
        )
    recs.append(_job(root, "s", dict(sst, condition="spared", target="all"), 0.83, (0.79, 0.87), n_masked=170))
    pres = {"task": "sst2", "variant": "raw", "K": 64}
    recs.append(_job(root, "p", dict(pres, condition="preserve"), 0.895, (0.86, 0.92), n_masked=900, n_kept=100))
    for s, v in enumerate([0.52, 0.50, 0.51]):
        recs.append(
            _job(
                root,
                f"pc{s}",
                dict(pres, condition="preserve_count", seed=s),
                v,
                (v - 0.05, v + 0.05),
                n_masked=900,
                n_kept=100,
            )
        )
    # CoLA: unmasked 0.69 [0.64, 0.74] covers the majority rate 0.69 -> at chance
    recs.append(_job(root, "cu", {"task": "cola", "condition": "unmasked"}, 0.69, (0.64, 0.74), chance=0.69))
    recs.append(
        _job(
            root,
            "cl",
            {"task": "cola", "variant": "raw", "K": 10, "condition": "lesion", "target": "all"},
            0.31,
            (0.26, 0.36),
            chance=0.69,
            n_masked=180,
        )
    )
    for s, v in enumerate([0.68, 0.70]):
        recs.append(
            _job(
                root,
                f"cc{s}",
                {"task": "cola", "variant": "raw", "K": 10, "condition": "count", "target": "all", "seed": s},
                v,
                (v - 0.05, v + 0.05),
                chance=0.69,
                n_masked=180,
            )
        )
    return recs


def test_report_states_planted_effects_as_paired_differences_and_flags_chance(tmp_path):
    recs = _planted(tmp_path)
    out = write_report(
        tmp_path,
        preset={"name": "synthetic", "model": "gpt2", "path": "finetune", "n_networks": 10},
        records=recs,
        out=tmp_path / "published",
    )
    text = (tmp_path / "published" / "report.md").read_text()
    lesion = next(line for line in text.splitlines() if line.startswith("- sst2, all networks lesioned"))
    assert "0.550 [0.500, 0.600] (at chance), unmasked 0.900 [0.860, 0.930], drop +0.350 [" in lesion  # CI covers 0.5
    assert "Count-matched random 0.884" in lesion and "extra drop +0.334 [" in lesion and ", hurts more." in lesion
    assert "Magnitude-matched 0.560" in lesion and "extra drop +0.010 [" in lesion
    assert lesion.count("not distinguishable") == 1  # against magnitude-matched only
    assert "recovers +0.280 [" in lesion and "(80% of the drop)" in lesion  # (0.83 - 0.55) / (0.90 - 0.55)
    assert "the massive units carry part of the effect" in lesion
    assert "without them the lesion still drops +0.070 [" in lesion  # 0.90 - 0.83
    assert "+0.054 [" in lesion and "(still hurts more)" in lesion  # the count-matched 0.884 - 0.83
    pres = next(line for line in text.splitlines() if "only the K=64 networks kept" in line)
    assert "100 neurons, 10.0% of neurons" in pres
    assert "loss vs unmasked +0.005 [" in pres and "(performance kept)" in pres  # 2 rows of 400: CI covers 0
    assert "vs count-matched random kept +0.385 [" in pres and "(networks keep more)" in pres
    assert "**cola: at chance.**" in text and "**sst2: at chance" not in text
    cola = next(line for line in text.splitlines() if line.startswith("- cola, all networks lesioned"))
    assert "extra drop +0.3" in cola and "no claim: task at chance" in cola and "hurts more" not in cola
    head = text.split("## What holds")[1].split("## Findings")[0]
    assert "all networks together vs count-matched random lesions: 1 of 1 hurt more" in head  # cola: at chance
    assert "vs magnitude-matched random lesions: 0 of 1 hurt more, 0 hurt less, 1 not distinguishable" in head
    assert "Preservation with no measurable loss: sst2 K=64." in head and "At chance unmasked" in head
    assert "recovers part of a lesion's drop in 1 of 1 lesions (median share of the drop: 80%)" in head
    assert (
        "Networks without their massive units vs the count-matched random lesion of the whole network: 1 of 1" in head
    )
    effects = list(csv.DictReader(open(tmp_path / "published" / "effects.csv")))
    count = next(e for e in effects if e["a"] == "count" and e["task"] == "sst2")
    assert float(count["diff"]) == pytest.approx(0.334) and float(count["ci_low"]) > 0.25
    assert count["n_rows"] == "400" and count["n_a"] == "5" and count["n_b"] == "1"
    rows = list(csv.DictReader(open(tmp_path / "published" / "summary.csv")))
    lesion_row = next(r for r in rows if r["task"] == "sst2" and r["condition"] == "lesion")
    assert float(lesion_row["paper"]) == pytest.approx(0.5436)  # Table 5, GPT-2 SST-2, 10 networks
    assert float(lesion_row["unmasked"]) == 0.90 and lesion_row["unmasked_at_chance"] == "False"
    count_row = next(r for r in rows if r["task"] == "sst2" and r["condition"] == "count")
    assert count_row["n_jobs"] == "5" and float(count_row["ci_low"]) < 0.884 < float(count_row["ci_high"])
    assert out["preservation"].exists() and not (tmp_path / "report.md").exists()
    conditions = text.split("## All conditions")[1].split("##")[0]
    assert re.search(r"\| count\s*\| all\s*\|\s*10 \|.*\|\s*180 \|", conditions)  # a mean over seeds, shown whole
    assert "180.000" not in conditions
    assert re.search(r"\| evaluate\s*\|\s*21\s*\|\s*21\s*\|\s*42 \|", text.split("## Wall time")[1])  # 21 jobs x 2 s


def test_statements_never_claim_on_one_random_seed_or_without_predictions(tmp_path):
    from fnet.study.report import load_results, summarize

    recs = _planted(tmp_path)[:3]  # unmasked, lesion and a single count seed
    lines = statements(summarize(load_results(recs)))
    assert "not decided (one random seed)" in lines[0] and "hurts more" not in lines[0]
    assert "drop +0.350 [" in lines[0]  # the lesion vs the unmasked model is decided on the rows alone
    bare = tmp_path / "bare"
    recs = [
        _job(bare, "u", {"task": "sst2", "condition": "unmasked"}, 0.9, (0.86, 0.93), predictions=False),
        _job(
            bare,
            "l",
            {"task": "sst2", "variant": "raw", "K": 10, "condition": "lesion", "target": "all"},
            0.55,
            (0.5, 0.6),
            predictions=False,
        ),
    ]
    line = statements(summarize(load_results(recs)))[0]
    assert "drop n/a" in line and "not measured" in line and "hurts" not in line


def test_paper_tables_transcribed():
    models = paper_tables()["models"]
    assert models["gpt2"]["lesion_each"]["ag_news"]["scores"][4] == 0.5749
    assert models["gpt2"]["preserve"]["cola"]["256"] == {"score": 0.7776, "kept": 2109}
    assert models["chatglm3_6b"]["preserve"]["sst2"]["512"] == {"score": 0.9404, "kept": 26513}
    assert models["qwen2_5_3b"]["unmasked"]["sst2"] == 0.844 and models["qwen2_5_3b"]["lesion_all"]["sst2"] == 0


def test_raw_vs_normalised_lines_compare_drops_and_layers(tmp_path):
    from fnet.study.report import effects, load_results, normalisation, summarize

    recs = _planted(tmp_path)
    norm = {"task": "sst2", "variant": "normalised", "K": 10}
    recs.append(_job(tmp_path, "nl", dict(norm, condition="lesion", target="all"), 0.88, (0.84, 0.91), n_masked=500))
    for s, v in enumerate([0.89, 0.88, 0.90]):
        recs.append(
            _job(
                tmp_path,
                f"nm{s}",
                dict(norm, condition="magnitude", target="all", seed=s),
                v,
                (v - 0.04, v + 0.04),
                n_masked=500,
            )
        )
    lines = normalisation(effects(summarize(load_results(recs))), {"sst2 raw": 27.6, "sst2 normalised": 2.3})
    assert len(lines) == 1 and "raw mean layer 27.6, normalised mean layer 2.3" in lines[0]
    assert "raw: drop +0.350 [" in lines[0] and "normalised: drop +0.020 [" in lines[0]
    assert "beyond magnitude-matched +0.010 [" in lines[0]  # raw: 0.56 vs 0.55
    assert lines[0].endswith("(not distinguishable).")  # normalised: 0.89 vs 0.88, seeds differ


def test_a_score_under_the_majority_rate_is_marked_below_chance_not_left_unmarked():
    from fnet.study.report import _fmt

    row = {"score": 0.45, "ci_low": 0.383, "ci_high": 0.519, "n_jobs": 1, "chance": 0.55}
    assert _fmt(row) == "0.450 [0.383, 0.519] (below chance, 0.550)"
    assert _fmt(dict(row, chance=0.5)) == "0.450 [0.383, 0.519] (at chance)"
    assert _fmt(dict(row, chance=0.3)) == "0.450 [0.383, 0.519]"


def test_network_ids_in_the_massive_units_table_stay_short():
    from fnet.study.report import ids_text as _ids

    assert _ids([3, 1, 2], 10) == "1, 2, 3"
    assert _ids(list(range(512)), 512) == "all"
    assert _ids([i for i in range(512) if i not in (8, 61)], 512) == "all but 8, 61"
    assert _ids(list(range(0, 400, 2)), 512) == "0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, ..."


def test_the_report_names_each_runs_machine_and_a_study_resumed_elsewhere_names_both(tmp_path):
    recs = _planted(tmp_path)
    runs = [
        {
            "started": "2026-11-30T10:00:00",
            "workers": 2,
            "seconds": 600,
            "counts": {"ran": 5, "failed": 0},
            "machine": "vm: AMD EPYC, 2 CPUs, no GPU",
        },
        {"started": "2026-11-30T11:00:00", "workers": 2, "dry_run": True, "seconds": 1},  # not a run
        {
            "started": "2026-11-30T12:00:00",
            "workers": 2,
            "seconds": 1200,
            "interrupted": True,
            "machine": "vm: AMD EPYC, 2 CPUs, no GPU",
        },
        {
            "started": "2026-12-01T03:00:00",
            "workers": 2,
            "seconds": 1800,
            "counts": {"ran": 9, "failed": 0},
            "machine": "vm: Intel(R) Xeon(R) Processor, 2 CPUs, no GPU",
        },
        {"started": "2026-11-29T09:00:00", "workers": 1, "seconds": 60, "counts": {"ran": 1, "failed": 0}},
        {
            "started": "2026-12-01T04:00:00",
            "workers": 2,
            "seconds": 7200,
            "counts": {"ran": 7, "failed": 0},
            "hours": 2.0,
            "deadline_reached": True,
            "machine": "vm: Intel(R) Xeon(R) Processor, 2 CPUs, no GPU",
        },
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    write_report(
        tmp_path,
        preset={"name": "synthetic", "model": "gpt2", "path": "finetune", "n_networks": 10},
        records=recs,
        out=tmp_path / "published",
    )
    text = (tmp_path / "published" / "report.md").read_text()
    assert "effects are those of one fine-tuned model (one training run)" in text  # path: finetune
    assert (
        "Machines: vm: AMD EPYC, 2 CPUs, no GPU (2 runs); vm: Intel(R) Xeon(R) Processor, 2 CPUs, no GPU (2 runs); "
        "not recorded (1 run)."
    ) in text
    wall = text.split("## Wall time")[1]
    assert "Runs of the study command (it resumes): 5, 3.02 h of wall time in all." in wall  # 10860 s, dry run out
    assert re.search(
        r"\| 2026-12-01T03:00:00 \| vm: Intel\(R\) Xeon\(R\) Processor, 2 CPUs, no GPU\s*\|\s*2 \|\s*9\s*\|", wall
    )
    assert re.search(r"\| 2026-11-30T12:00:00 \| vm: AMD EPYC.*\| stopped midway\s*\|", wall)
    assert re.search(r"\| 2026-12-01T04:00:00 \| .*\| 7 \(stopped at --hours 2\) \|", wall)
    write_report(
        tmp_path,
        preset={"name": "synthetic", "model": "gpt2", "path": "zeroshot", "n_networks": 10},
        records=recs,
        out=tmp_path / "zeroshot",
    )
    assert "one training run" not in (tmp_path / "zeroshot" / "report.md").read_text()  # nothing was trained


def _curve_rows(tasks, *, pooled=False):
    """Summary rows of a preservation curve per task: networks, count-matched controls, unmasked and chance."""
    rows = []
    for task in tasks:
        for cond, base in (("preserve", 0.6), ("preserve_count", 0.5)):
            for i, kept in enumerate((100, 1000, 10000)):
                score = base + 0.1 * i
                rows.append(
                    {
                        "task": task,
                        "condition": cond,
                        "metric": "accuracy",
                        "score": score,
                        "ci_low": score - 0.05,
                        "ci_high": score + 0.05,
                        "n_kept": kept,
                        "n_neurons": 36864,
                        "unmasked": 0.9,
                        "chance": 0.5,
                        "run": "pooled" if pooled else None,
                    }
                )
    return rows


@pytest.mark.parametrize("pooled", [False, True])
def test_preservation_figures_give_every_task_a_readable_panel_and_the_papers_numbers(tmp_path, pooled):
    """7 tasks: a 3 x 3 grid of 5 x 3.9 in panels, not a strip of 7; the paper's preservation points are drawn
    only when the paper studied the study's model (its neuron counts compare), its unmasked score always."""
    import numpy as np
    from PIL import Image

    from fnet.study.figures import plot_preservation, plot_preservation_panels

    plot, dpi = (plot_preservation_panels, 110) if pooled else (plot_preservation, 100)
    tasks = ["cola", "mrpc", "qqp", "sst2", "mnli", "qnli", "ag_news"]
    gpt2 = paper_tables()["models"]["gpt2"]
    paths = {}
    for label, kwargs in (
        ("none", {}),
        ("line", dict(paper=gpt2, paper_name="gpt2")),
        ("points", dict(paper=gpt2, paper_name="gpt2", same_model=True)),
    ):
        paths[label] = plot(_curve_rows(tasks, pooled=pooled), tmp_path / f"{label}.png", **kwargs)
    image = {k: np.asarray(Image.open(p).convert("L"), dtype=np.int16) for k, p in paths.items()}
    assert image["none"].shape == (round(dpi * 3 * 3.9), round(dpi * 3 * 5.0))
    assert all(a.shape == image["none"].shape for a in image.values())
    assert (image["line"] != image["none"]).sum() > 500 and (image["points"] != image["line"]).sum() > 100
    assert (
        plot([r for r in _curve_rows(["sst2"], pooled=pooled) if r["condition"] != "preserve"], tmp_path / "empty.png")
        is None
    )


def test_runs_csv_takes_machine_and_code_from_the_record_or_the_run_it_finished_in():
    """runs.csv: a train record's own machine; else the study command's run (runs.jsonl) whose time window holds
    the job's finish, with that run's code key; else 'not recorded' (never the machine writing the report)."""
    from fnet.study.render_pooled import _runs

    m1 = "vm1: Xeon (family 6 model 167 stepping 1, AVX512 kernels), 2 CPUs, no GPU"
    log = [
        {"started": "2026-12-07T05:00:00", "seconds": 3600, "machine": m1, "environment": {"code": "c1"}},
        {"started": "2026-12-08T05:00:00", "seconds": 60, "machine": "vm2: EPYC (AVX2 kernels)", "environment": {}},
    ]

    def train(run, finished, **extra):
        return {
            "stage": "train",
            "status": "skipped",
            "meta": {"task": "sst2", "run": run},
            "finished": finished,
            **extra,
        }

    records = [
        train(0, "2026-12-07T05:30:00"),
        train(1, "2026-12-07T05:31:00", machine="vm3: Z (family 25 model 1 stepping 1, AVX2 kernels), 2 CPUs"),
        train(2, "2026-12-09T00:00:00"),
    ]
    per_run = [{"task": "sst2", "run": 0, "condition": "unmasked", "score": 0.87, "metric": "accuracy"}]
    rows = _runs(records, per_run, "now", log)
    assert [(r["machine"], r["cpu"], r["code"]) for r in rows] == [
        (m1, "family 6 model 167 stepping 1, AVX512 kernels", "c1"),
        (records[1]["machine"], "family 25 model 1 stepping 1, AVX2 kernels", "c1"),
        ("not recorded", "not recorded", "now"),
    ]
    assert rows[0]["unmasked"] == 0.87 and rows[2]["unmasked"] is None


def test_what_holds_gives_the_papers_difference_where_it_reports_both_conditions():
    """Liu et al.'s GPT-2 SST-2: unmasked 0.9163, all networks lesioned 0.5436, K=10 preserved 0.5195; it has no
    count-matched control and no normalised networks, so those comparisons get no paper number."""
    from fnet.study.render_pooled import _paper_difference
    from fnet.study.summary import paper_tables

    gpt2 = paper_tables()["models"]["gpt2"]
    c = {"task": "sst2", "a": "unmasked", "b": "lesion", "target": "all", "K": 10, "variant": "raw"}
    assert _paper_difference(gpt2, c) == 0.373
    assert _paper_difference(gpt2, {**c, "b": "preserve"}) == 0.397
    assert _paper_difference(gpt2, {**c, "a": "count"}) is None
    assert _paper_difference(gpt2, {**c, "variant": "normalised"}) is None
    assert _paper_difference(None, c) is None


def test_raw_and_normalised_networks_are_placed_by_layer_over_every_training_run(tmp_path):
    """Planted networks: raw ones in the last layer (run 0: 3 neurons in layer 3; run 1: 1 in layer 2, 3 in layer
    3), normalised ones in layer 0. Every run counts, not only the first; the section gives the exact mean layers
    and the pooled lesion verdict beside them."""
    import torch

    from fnet.networks import NetworkSet
    from fnet.study.figures import layer_profiles
    from fnet.study.render_pooled import _layer_lines

    def netset(cells):
        masks = torch.zeros(2, 4, 8, dtype=torch.bool)  # [networks, layers, width]
        for k, layer, unit in cells:
            masks[k, layer, unit] = True
        return NetworkSet(masks, provenance={"signal": "mlp_out"}).save(
            tmp_path / f"{len(list(tmp_path.iterdir()))}.st"
        )

    files = {
        ("sst2", 0, "raw"): netset([(0, 3, 0), (0, 3, 1), (1, 3, 2)]),
        ("sst2", 1, "raw"): netset([(0, 2, 0), (0, 3, 1), (1, 3, 2), (1, 3, 3)]),
        ("sst2", 0, "normalised"): netset([(0, 0, 0), (1, 0, 1)]),
    }
    profiles = layer_profiles(files)
    raw = profiles[("sst2", "raw")]
    assert raw["runs"] == [0, 1] and raw["neurons"] == [3, 4]
    assert raw["centres"] == pytest.approx([3.0, 2.75]) and raw["shares"][1].tolist() == [0, 0, 0.25, 0.75]
    verdicts = [
        {"task": "sst2", "variant": "raw", "target": "all", "a": "unmasked", "b": "lesion", "diff": 0.225,
         "verdict": "unmasked > lesion in each of the 2 runs"},
    ]  # fmt: skip
    text = "\n".join(_layer_lines(profiles, verdicts))
    assert re.search(r"\| sst2 \| normalised \|\s+1 \| 0\.0 \[0\.0, 0\.0\]\s+\| 0\.00\s+\|\s+2 \| n/a", text)
    assert re.search(
        r"\| sst2 \| raw\s+\|\s+2 \| 2\.9 \[2\.8, 3\.0\]\s+\| 1\.00\s+\|\s+4 \| \+0\.225\s+\| unmasked >", text
    )


def test_what_holds_names_tasks_at_chance_and_says_where_the_paper_is_not_reproduced():
    """A task at chance is named with its pooled score and makes no claim; a claim gives its paper number and
    whether it agrees in direction; a paper effect this study does not show is listed as such, not dropped."""
    from fnet.study.render_pooled import _claim_lines
    from fnet.study.summary import paper_tables

    gpt2 = paper_tables()["models"]["gpt2"]
    base = {"variant": "raw", "target": "all", "K": 10, "ci_low_corrected": 0.1, "ci_high_corrected": 0.3}
    verdicts = [
        {**base, "task": "cola", "a": "unmasked", "b": "lesion", "diff": 0.01, "runs_holding": 0, "n_runs": 3,
         "verdict": "no claim: task at chance"},
        {**base, "task": "sst2", "a": "unmasked", "b": "lesion", "diff": -0.2, "runs_holding": 3, "n_runs": 3,
         "verdict": "unmasked < lesion in each of the 3 runs"},
        {**base, "task": "sst2", "a": "unmasked", "b": "preserve", "diff": 0.05, "runs_holding": 1, "n_runs": 3,
         "ci_low_corrected": -0.3, "verdict": "not shown"},
    ]  # fmt: skip
    summary = [
        {"task": "cola", "run": "pooled", "condition": "unmasked", "metric": "mcc", "score": 0.02, "ci_low": -0.05,
         "ci_high": 0.09, "chance": 0.0},
    ]  # fmt: skip
    text = "\n".join(_claim_lines(verdicts, gpt2, summary))
    assert "- **cola**: the unmasked model is at chance (mcc +0.020 pooled over runs" in text
    assert (
        "**unmasked < lesion in each of the 3 runs**; on its own in 3 of 3 runs; paper +0.373, **the opposite" in text
    )
    assert "Not shown here: sst2, raw K=10 networks, unmasked − preserve: the paper reports +0.397" in text
    assert "- 1 of 3 comparisons show nothing after correction" in text


def test_what_holds_lists_each_claim_under_the_question_it_answers():
    """Claims are grouped by the study's questions, in their order, each group's claims before the paper's effects
    it does not show; a question with nothing to say has no heading."""
    from fnet.study.render_pooled import QUESTIONS, _claim_lines
    from fnet.study.summary import paper_tables

    gpt2 = paper_tables()["models"]["gpt2"]
    base = {
        "variant": "raw",
        "target": "all",
        "K": 10,
        "ci_low_corrected": 0.1,
        "ci_high_corrected": 0.3,
        "runs_holding": 3,
        "n_runs": 3,
        "task": "sst2",
        "diff": 0.2,
    }
    verdicts = [
        {**base, "task": "sst2 (zero-shot)", "a": "unmasked", "b": "lesion", "verdict": "unmasked > lesion"},
        {**base, "a": "unmasked", "b": "preserve", "ci_low_corrected": -0.3, "verdict": "not shown"},
        {**base, "a": "preserve_as_published", "b": "preserve", "verdict": "preserve_as_published > preserve"},
        {**base, "a": "massive_included", "b": "lesion", "verdict": "massive_included > lesion"},
        {**base, "target": "unit0", "a": "unmasked", "b": "unit", "verdict": "unmasked > unit"},
        {**base, "a": "count", "b": "lesion", "verdict": "count > lesion"},
        {**base, "variant": "normalised", "a": "count", "b": "lesion", "verdict": "not shown"},  # no paper value
    ]  # fmt: skip
    lines = _claim_lines(verdicts, gpt2, [])
    heads = [line.strip("*") for line in lines if line.startswith("**")]
    assert heads == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2], QUESTIONS[4]]  # nothing to say on normalised nets

    def under(i):  # the claim lines after a question's heading, to the next blank line
        rest = lines[lines.index(f"**{QUESTIONS[i]}**") + 2 :]
        return rest[: rest.index("")]

    assert under(0)[0].startswith("- sst2, raw K=10 networks: count − lesion")
    assert [line[:40] for line in under(1)[:2]] == [
        "- sst2, raw K=10 networks: massive_inclu",
        "- sst2, raw unit0 K=10 networks: unmaske",
    ]
    assert under(2)[0].startswith("- sst2, raw K=10 networks: preserve_as_published − preserve")
    assert under(2)[1].startswith("- Not shown here: sst2, raw K=10 networks, unmasked − preserve")
    assert under(4)[0].startswith("- sst2 (zero-shot), raw K=10 networks: unmasked − lesion = +0.200")
    assert lines[-1] == "- 2 of 7 comparisons show nothing after correction (all in the table below)."


def test_plan_and_cost_says_why_from_the_preset_and_sums_the_finished_jobs():
    """The report quotes why the expensive parts run where they do (the preset's header, its usage lines left
    out) and sums the finished jobs' seconds by stage; unfinished jobs count in the plan, not in the hours."""
    from fnet.study.render_pooled import _plan_lines

    records = [
        {"stage": "train", "status": "done", "seconds": 1800},
        {"stage": "evaluate", "status": "ran", "seconds": 5400},
        {"stage": "evaluate", "status": "pending", "seconds": None},
    ]
    text = "\n".join(_plan_lines({"name": "smollm2_v2"}, records))
    assert "single-network lesions and the preservation curve on SST-2 and AG News only" in text
    assert "--workers 2 --hours" not in text
    assert "Finished: 2 of 3 jobs, 2.0 CPU-hours (evaluate 1.5, train 0.5)" in text


def test_an_unfinished_plan_is_reported_as_interim_and_a_finished_one_is_not():
    from fnet.study.render_pooled import _interim_lines

    records = [
        {"stage": "train", "status": "done"},
        {"stage": "train", "status": "pending"},
        {"stage": "evaluate", "status": "ran"},
    ]
    assert _interim_lines(records)[0].startswith("**Interim report**: 2 of 3 jobs finished (1 of 2 training runs)")
    assert _interim_lines([dict(r, status="done") for r in records]) == []


def test_what_holds_counts_one_run_in_the_singular():
    """A comparison measured in one run (a zero-shot part, or a single-unit lesion on the first training run) reads
    "in 1 of 1 run", in a claim and in a paper effect it does not show (the figure's legend uses the same words);
    more runs stay plural."""
    from fnet.study.figures import run_count
    from fnet.study.render_pooled import _claim_lines
    from fnet.study.summary import paper_tables

    gpt2 = paper_tables()["models"]["gpt2"]
    base = {"variant": "raw", "target": "all", "K": 10, "ci_low_corrected": 0.1, "ci_high_corrected": 0.3,
            "task": "sst2", "diff": 0.2, "a": "unmasked"}  # fmt: skip
    verdicts = [
        {**base, "b": "lesion", "runs_holding": 1, "n_runs": 1, "verdict": "unmasked > lesion in its one run only"},
        {**base, "b": "preserve", "runs_holding": 0, "n_runs": 1, "ci_low_corrected": -0.3, "verdict": "not shown"},
        {**base, "b": "count", "runs_holding": 2, "n_runs": 3, "verdict": "unmasked > count"},
    ]  # fmt: skip
    text = "\n".join(_claim_lines(verdicts, gpt2, []))
    assert "on its own in 1 of 1 run; paper +0.373" in text
    assert "on its own in 0 of 1 run." in text
    assert "on its own in 2 of 3 runs." in text
    assert "1 of 1 runs" not in text and "0 of 1 runs" not in text
    assert (run_count(1), run_count(5)) == ("1 run", "5 runs")
