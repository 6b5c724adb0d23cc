"""fnet.study: the resumable job runner (with a fake entry point), presets, and the tiny study end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fnet.study import Job, load_preset, plan, run_jobs, summary_lines

FAKE = """
import json, sys, pathlib
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = pathlib.Path(args["hydra.run.dir"])
with open(pathlib.Path(__file__).with_name("calls.txt"), "a") as f:
    f.write(args.get("name", "?") + "\\n")
if args.get("fail") == "1" or pathlib.Path(__file__).with_name("fail_" + args.get("name", "?")).exists():
    sys.exit(3)
if args.get("kind") == "ckpt":
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / "best-0-1.ckpt").write_text(args.get("weights", "w0"))
else:
    (out / "result.json").write_text(json.dumps({"args": args}))
"""


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake.py").write_text(FAKE)
    return tmp_path


def _calls(fake):
    path = fake / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _jobs(lr="0.1"):
    return [
        Job("train/a", "train", ["fake.py"], ["name=train", "kind=ckpt"], [], {}, "checkpoints/best-*.ckpt"),
        Job("evaluate/a/x", "evaluate", ["fake.py"], ["name=x", "ckpt={train/a}", f"lr={lr}"], ["train/a"]),
        Job("evaluate/a/y", "evaluate", ["fake.py"], ["name=y", "ckpt={train/a}"], ["train/a"]),
    ]


def _run(fake, jobs, **kw):
    kw.setdefault("env_key", "env0")
    return run_jobs(jobs, fake / "study", cwd=fake, log=lambda *_: None, **kw)


def test_rerun_skips_finished_jobs_and_says_nothing_was_recomputed(fake):
    first = _run(fake, _jobs())
    assert first["counts"]["ran"] == 3 and _calls(fake) == ["train", "x", "y"]
    ckpt = next((fake / "study" / "train").glob("*/checkpoints/best-0-1.ckpt"))
    result = json.loads(next((fake / "study" / "evaluate").glob("a_x-*/result.json")).read_text())
    assert result["args"]["ckpt"] == str(ckpt)  # the placeholder became the dependency's output
    second = _run(fake, _jobs())
    assert _calls(fake) == ["train", "x", "y"]  # nothing ran again
    assert second["counts"] == {"skipped": 3, "ran": 0, "failed": 0, "blocked": 0, "pending": 0, "excluded": 0}
    lines = summary_lines(second)
    assert lines[0].startswith("3 jobs, 3 already done, recomputed 0")
    assert "nothing was recomputed" in lines[1]


def test_a_changed_override_or_input_content_reruns_only_what_depends_on_it(fake):
    _run(fake, _jobs())
    _run(fake, _jobs(lr="0.2"))
    assert _calls(fake) == ["train", "x", "y", "x"]  # only x changed
    assert len(list((fake / "study" / "evaluate").glob("a_x-*"))) == 2  # the old result is kept
    # the checkpoint's bytes changed under a finished train job: its dependents are recomputed, train is not
    ckpt = next((fake / "study" / "train").glob("*/checkpoints/best-0-1.ckpt"))
    ckpt.write_text("other weights")
    result = _run(fake, _jobs(lr="0.2"))
    assert _calls(fake)[4:] == ["x", "y"] and result["counts"]["skipped"] == 1
    _run(fake, _jobs(lr="0.2"), env_key="env1")  # another code / config version: everything anew
    assert _calls(fake)[6:] == ["train", "x", "y"]


def test_a_failed_job_is_recorded_its_dependents_blocked_the_rest_run_and_a_rerun_continues(fake):
    (fake / "fail_train").write_text("")
    result = _run(fake, _jobs() + [Job("evaluate/b/z", "evaluate", ["fake.py"], ["name=z"])])
    assert result["counts"]["failed"] == 1 and result["counts"]["blocked"] == 2 and result["counts"]["ran"] == 1
    assert _calls(fake) == ["train", "z"]
    failed = json.loads(next((fake / "study" / "train").glob("*/failed.json")).read_text())
    assert failed["why"] == "exit code 3" and not list((fake / "study" / "train").glob("*/job.json"))
    lines = summary_lines(result)
    assert any("failed: train/a" in line for line in lines) and any("blocked: evaluate/a/x" in line for line in lines)
    (fake / "fail_train").unlink()
    again = _run(fake, _jobs() + [Job("evaluate/b/z", "evaluate", ["fake.py"], ["name=z"])])
    assert _calls(fake)[2:] == ["train", "x", "y"] and again["counts"]["skipped"] == 1
    assert list((fake / "study" / "train").glob("*.interrupted-*"))  # the failed attempt is kept aside


def test_only_and_dry_run_run_nothing_else(fake):
    result = _run(fake, _jobs(), only="train")
    assert _calls(fake) == ["train"] and result["counts"]["excluded"] == 2
    dry = _run(fake, _jobs(), dry_run=True)
    assert _calls(fake) == ["train"] and dry["counts"] == {
        "skipped": 1,
        "ran": 0,
        "failed": 0,
        "blocked": 0,
        "pending": 2,
        "excluded": 0,
    }


def test_presets_load_and_bad_keys_are_named():
    tiny = load_preset("tiny")
    jobs = plan(tiny)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    stages = [j.stage for j in jobs]
    assert stages.index("train") < stages.index("analyze") < stages.index("controls") < stages.index("evaluate")
    conditions = {j.meta.get("condition") for j in jobs if j.stage == "evaluate"}
    assert conditions == {
        "unmasked",
        "lesion",
        "count",
        "magnitude",
        "spared",
        "unit",
        "preserve",
        "preserve_count",
        "preserve_magnitude",
    }
    assert sum(1 for j in jobs if j.meta.get("condition") == "count" and j.meta.get("target") == "all") == 2
    for name in ("smollm2", "gpt2", "qwen2_5_3b", "chatglm3_6b"):
        preset = load_preset(name)
        jobs = plan(preset)
        assert {j.meta["task"] for j in jobs if j.stage == "evaluate"} >= set(preset["tasks"])
    smol = plan(load_preset("smollm2"))
    assert {j.meta["task"] for j in smol if j.meta.get("path") == "zeroshot"} == {
        "sst2 (zero-shot)",
        "ag_news (zero-shot)",
    }
    assert len({j.meta["K"] for j in smol if j.meta.get("condition") == "preserve"}) == 5
    with pytest.raises(ValueError, match="unknown key sedes \\(did you mean seeds\\?\\); valid keys of the preset"):
        load_preset("tiny", ["sedes=3"])
    with pytest.raises(FileNotFoundError, match="valid presets: .*'tiny'"):
        load_preset("nope")


@pytest.mark.slow
def test_tiny_study_end_to_end_through_the_real_entry_points(tmp_path):
    """Fine-tune, analyze, controls and evaluate jobs of the tiny preset (trimmed), then a rerun that skips all."""
    root = tmp_path / "study"
    # its own cache: the study's content-keyed caches must not meet another run's entries of the same weights
    env = dict(os.environ, OMP_NUM_THREADS="1", FNET_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fnet.study", "tiny", "lesion_each=[]", "seeds=2", "--root", str(root)]
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (root / "report.md").read_text()
    assert "sst2, all networks lesioned" in report and "count-matched" in report
    assert "only the K=3 networks kept" in report
    assert (root / "summary.csv").exists() and (root / "layers.png").exists() and (root / "preservation.png").exists()
    explorer = (root / "explorer.html").read_text()  # v1: the analyze jobs' networks as cards, with time courses
    sets = [
        j for j in plan(load_preset("tiny", ["lesion_each=[]", "seeds=2"])) if j.stage == "analyze" and j.meta["K"] == 3
    ]
    assert explorer.count('<article class="card"') == 3 * len(sets) > 0 and "Top contexts" in explorer
    assert "predates time courses" not in explorer
    second = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert second.returncode == 0
    n = len(plan(load_preset("tiny", ["lesion_each=[]", "seeds=2"])))
    assert f"{n} jobs, {n} already done, recomputed 0" in second.stdout


@pytest.mark.slow
def test_tiny_v2_study_runs_every_level_end_to_end_and_pools_its_runs(tmp_path):
    """The v2 plan on the tiny model: two training runs with their own networks, streams, mean ablation, tail bins,
    the massive-included control, a second threshold and the as-published masking, all finished; the report pools
    the two runs (summary.csv: per run and pooled rows; runs.csv: one row per run; effects.csv: corrected p
    values), and a rerun recomputes nothing."""
    import csv

    root = tmp_path / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1", FNET_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fnet.study", "tiny_v2", "--root", str(root)]
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    n = len(plan(load_preset("tiny_v2")))
    assert f"{n} jobs, 0 already done, recomputed {n}, failed 0" in first.stdout
    with open(root / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert {r["run"] for r in summary} == {"0", "1", "pooled"}
    conditions = {r["condition"] for r in summary}
    assert {"lesion_mean", "massive_included", "count_mean", "preserve_as_published", "unit_mean"} <= conditions
    with open(root / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert [r["seed"] for r in runs] == ["0", "1"] and all(r["code"] != "not recorded" for r in runs)
    with open(root / "effects.csv") as handle:
        pooled = [r for r in csv.DictReader(handle) if r["run"] == "pooled"]
    assert pooled and all(r["p_adjusted"] and float(r["p_adjusted"]) >= float(r["p"]) for r in pooled)
    assert (root / "lesion_effects.png").exists() and (root / "preservation.png").exists()
    explorer = (root / "explorer.html").read_text()  # v2: each run's networks, per-network lesion effects
    sets = [j for j in plan(load_preset("tiny_v2")) if j.stage == "analyze" and j.meta["K"] == 3]
    assert explorer.count('<article class="card"') == 3 * len(sets) > 0 and 'class="effect"' in explorer
    assert "Holm" in (root / "report.md").read_text() or "holm" in (root / "report.md").read_text()
    second = subprocess.run(cmd + ["--no-report"], cwd=repo, env=env, capture_output=True, text=True)
    assert f"{n} jobs, {n} already done, recomputed 0" in second.stdout


def test_v2_plan_levels_and_a_v1_plan_unchanged():
    """Training runs name their jobs by run and train with seed=run; controls get a stream per task and run;
    mean ablation, tail bins and the massive-included control are planned; v1 presets plan exactly as before
    (the same names, so committed v1 reports still compose)."""
    jobs = plan(load_preset("tiny_v2"))
    train = [j for j in jobs if j.stage == "train"]
    assert [j.name for j in train] == ["train/sst2/run0", "train/sst2/run1"]
    assert "seed=1" in train[1].overrides
    mag = next(j for j in jobs if j.name == "evaluate/finetune/sst2/run1/raw/magnitude/all/seed0")
    assert "mask.stream=sst2/run1" in mag.overrides and "mask.bins=[0.5,0.9]" in mag.overrides
    assert mag.deps == ["train/sst2/run1", "analyze/sst2/run1/K3/raw", "controls/sst2/run1/K3/raw"]
    assert any(j.name.endswith("raw/lesion_mean/all") and "mask.ablation=mean" in j.overrides for j in jobs)
    v1 = plan(load_preset("tiny"))
    assert [j.name for j in v1][:3] == ["train/sst2", "analyze/sst2/K3/raw", "controls/sst2/K3/raw"]
    assert not any("mask.stream" in o or o.startswith("seed=") for j in v1 for o in j.overrides)


def _netset(masks):
    import torch

    from fnet.networks import NetworkSet

    return NetworkSet.from_masks(torch.from_numpy(masks), provenance={"model": "planted", "model_fingerprint": "f"})


def test_study_controls_follow_the_planted_massive_unit():
    """The study's magnitude-matched, spared and single-unit masks (registry kinds the plan asks evaluate.py for)
    keep each network's per-layer counts, avoid it, and find, spare and lesion alone the planted massive unit."""
    import numpy as np

    from fnet.intervene import build_mask
    from fnet.intervene.controls import magnitude_bins

    rng = np.random.default_rng(0)
    K, n_layers, width = 3, 4, 40
    scale = rng.uniform(0.5, 1.5, size=(n_layers, width))
    scale[:, 7] = 80.0  # the massive channel
    masks = np.zeros((K, n_layers, width), dtype=bool)
    for k in range(K):
        masks[k, 3, 7] = True
        masks[k, k, 10 + 3 * k : 14 + 3 * k] = True
    nets, bins = _netset(masks), magnitude_bins(scale, 10)
    massive = dict(scale=scale, top_k=1, n_units=1)
    for k in range(K):
        for s in range(2):
            drawn = build_mask("magnitude", netset=nets, networks=k, seed=s, scale=scale)
            assert drawn.stats["per_layer"] == masks[k].sum(axis=1).tolist() and drawn.meta["fallbacks"] == 0
            assert not (drawn.mask.numpy() & masks[k]).any() and drawn.meta["overlap_layers"] == []
        # layer 3 of every network is the massive unit alone: its magnitude match is another top-decile unit
        layer3 = build_mask("magnitude", netset=nets, networks=k, seed=0, scale=scale).mask.numpy()[3]
        assert layer3.sum() == 1 and bins[3, layer3].tolist() == [9] and not layer3[7]
        spared = build_mask("spared", netset=nets, networks=k, **massive)
        assert spared.meta["units"] == [7] and (spared.mask.numpy() == (masks[k] & (np.arange(width) != 7))).all()
    alone = build_mask("unit", netset=nets, unit=0, **massive).mask.numpy()
    assert alone.sum() == 1 and alone[3, 7]


def test_controls_of_networks_that_fill_a_layer_keep_counts_and_list_the_overlap():
    """Preservation at large K: the union of the networks fills layer 1, so its magnitude-matched draw must
    overlap it there (and only there); a single network's draws stay disjoint."""
    import numpy as np

    from fnet.intervene import build_mask

    rng = np.random.default_rng(1)
    K, n_layers, width = 12, 3, 32
    scale = rng.uniform(0.5, 1.5, size=(n_layers, width))
    masks = np.zeros((K, n_layers, width), dtype=bool)
    for k in range(K):
        masks[k, 1, 2 * k : 2 * k + 3] = True  # together: units 0..24 of layer 1 (25 of 32)
        masks[k, 0, k] = True
    nets, union = _netset(masks), masks.any(axis=0)
    for s in range(2):
        drawn = build_mask("magnitude", netset=nets, networks="all", seed=s, scale=scale)
        d = drawn.mask.numpy()
        assert drawn.stats["per_layer"] == union.sum(axis=1).tolist() == [12, 25, 0]
        assert not (d[0] & union[0]).any() and (d[1] & union[1]).sum() >= 18
        assert drawn.meta["overlap_layers"] == [1]
        kept = build_mask("magnitude_preserve", netset=nets, seed=s, scale=scale)
        assert (kept.mask.numpy() == ~d).all()
    for k in range(K):
        assert build_mask("magnitude", netset=nets, networks=k, seed=0, scale=scale).meta["overlap_layers"] == []


def test_task_stimuli_give_each_task_its_own_networks():
    """stimuli=task: every task's analyze jobs record that task's prompts (data=task); the paper presets use it
    with networks=paper (z > 3.6, positive tail)."""
    jobs = plan(load_preset("tiny", ["stimuli=task", "tasks=[sst2,cola]", "lesion_each=[]", "preserve_K=[]"]))
    analyze = [j for j in jobs if j.stage == "analyze"]
    assert {j.meta["scope"] for j in analyze} == {"sst2", "cola"}
    for j in analyze:
        assert "data=task" in j.overrides and f"data.datasets.task.source=task:{j.meta['scope']}" in j.overrides
    smol = load_preset("smollm2")
    assert smol["stimuli"] == "task" and "networks=paper" in smol["analyze"]
    with pytest.raises(ValueError, match="stimuli must be one of \\['genre', 'task'\\], got 'prompts'"):
        load_preset("tiny", ["stimuli=prompts"])


SLOW = """
import json, sys, time, pathlib
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = pathlib.Path(args["hydra.run.dir"])
start = time.time()
time.sleep(float(args.get("sleep", "0")))
(out / "result.json").write_text(json.dumps({"start": start, "end": time.time(), "name": args["name"]}))
"""


def test_workers_run_independent_jobs_at_once_and_dependents_after(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    jobs = [
        Job("evaluate/a", "evaluate", ["slow.py"], ["name=a", "sleep=3"]),
        Job("evaluate/b", "evaluate", ["slow.py"], ["name=b", "sleep=3"]),
        Job("evaluate/c", "evaluate", ["slow.py"], ["name=c", "dep={evaluate/a}"], ["evaluate/a"]),
    ]
    result = run_jobs(jobs, tmp_path / "study", cwd=tmp_path, log=lambda *_: None, env_key="e", workers=2)
    assert result["counts"]["ran"] == 3 and [r["name"] for r in result["jobs"]] == [
        "evaluate/a",
        "evaluate/b",
        "evaluate/c",
    ]
    times = {r["name"]: json.loads(Path(r["folder"], "result.json").read_text()) for r in result["jobs"]}
    a, b, c = times["evaluate/a"], times["evaluate/b"], times["evaluate/c"]
    assert a["start"] < b["end"] and b["start"] < a["end"]  # a and b overlapped
    assert c["start"] >= a["end"]  # c waited for its dependency
    again = run_jobs(jobs, tmp_path / "study", cwd=tmp_path, log=lambda *_: None, env_key="e", workers=2)
    assert again["counts"]["skipped"] == 3


def test_a_deadline_lets_running_jobs_finish_starts_no_other_and_a_rerun_continues(tmp_path):
    """--hours: after the deadline no job starts; the one running finishes with its marker; the rest are pending
    (ready or waiting for a dependency) and the next run does only them."""
    import time

    (tmp_path / "slow.py").write_text(SLOW)
    jobs = [
        Job("evaluate/a", "evaluate", ["slow.py"], ["name=a", "sleep=2"]),
        Job("evaluate/b", "evaluate", ["slow.py"], ["name=b"]),
        Job("evaluate/c", "evaluate", ["slow.py"], ["name=c", "dep={evaluate/a}"], ["evaluate/a"]),
    ]
    run = lambda **kw: run_jobs(jobs, tmp_path / "study", cwd=tmp_path, log=lambda *_: None, env_key="e", **kw)
    first = run(workers=1, deadline=time.time() + 1.0)
    assert [r["status"] for r in first["jobs"]] == ["ran", "pending", "pending"] and first["deadline_reached"]
    assert first["counts"]["ran"] == 1 and first["counts"]["pending"] == 2
    ended = json.loads(Path(first["jobs"][0]["folder"], "result.json").read_text())["end"]
    assert not list((tmp_path / "study" / "evaluate").glob("b-*/result.json"))
    second = run(workers=1)
    assert [r["status"] for r in second["jobs"]] == ["skipped", "ran", "ran"] and not second["deadline_reached"]
    assert json.loads(Path(second["jobs"][1]["folder"], "result.json").read_text())["start"] > ended
    assert run(workers=1, deadline=time.time() - 1)["counts"]["skipped"] == 3  # finished jobs need no time


def test_task_overrides_reach_only_their_task_and_bad_ones_are_named():
    jobs = plan(load_preset("smollm2"))
    squad = [j for j in jobs if j.meta.get("task") == "squad" and j.stage in ("train", "evaluate")]
    other = [j for j in jobs if j.meta.get("task") == "sst2" and j.stage in ("train", "evaluate")]
    assert squad and all("task.limit=100" in j.overrides for j in squad if j.stage == "evaluate")
    train = next(j for j in squad if j.stage == "train").overrides
    assert train.index("datamodule.max_length=160") > train.index("datamodule.max_length=64")  # the task's wins
    assert not any("datamodule.max_length=160" in j.overrides or "task.limit=100" in j.overrides for j in other)
    names = [j.name for j in jobs]
    for j in jobs:  # every dependency comes before its dependents; the first task's jobs come first
        assert all(names.index(d) < names.index(j.name) for d in j.deps)
    assert names[0] == "train/sst2" and names.index("evaluate/zeroshot/sst2/unmasked") < names.index("train/ag_news")
    with pytest.raises(ValueError, match="task_overrides \\['qqp'\\] are not in tasks"):
        load_preset("tiny", ["task_overrides={qqp: {train: [a=1]}}"])
    with pytest.raises(
        ValueError,
        match="unknown key task_overrides.sst2.eval .*; valid keys of task_overrides.sst2: analyze, evaluate, train",
    ):
        load_preset("tiny", ["task_overrides={sst2: {eval: [a=1]}}"])


def test_an_interrupted_runner_stops_its_jobs_and_logs_the_run(tmp_path):
    """SIGTERM (kill, scancel) stops the runner like Ctrl-C: running job processes are terminated at once, the
    finished job keeps its marker, runs.jsonl records the interrupted run, and a rerun continues."""
    import signal
    import time

    (tmp_path / "slow.py").write_text(SLOW)
    script = tmp_path / "runner.py"
    script.write_text(f"""
import sys, time
from pathlib import Path
from fnet.study import Job, run_jobs
from fnet.study import cli as runner
jobs = [Job("evaluate/quick", "evaluate", ["slow.py"], ["name=quick"]),
        Job("evaluate/long", "evaluate", ["slow.py"], ["name=long", "sleep=60"], ["evaluate/quick"])]
runner.plan = lambda preset: jobs
runner.run_jobs = lambda jobs, root, **kw: run_jobs(jobs, root, cwd={str(tmp_path)!r}, **dict(kw, env_key="e"))
sys.exit(runner.main(["tiny", "--root", {str(tmp_path / "study")!r}, "--no-report"]))
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "study" / "evaluate").glob("long-*")):
        time.sleep(0.2)
    time.sleep(1.0)  # the long job is running
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 130 and "rerun the same command to continue" in err
    assert time.time() - started < 30  # the 60 s job was stopped, not waited for
    assert list((tmp_path / "study" / "evaluate").glob("quick-*/job.json"))
    assert not list((tmp_path / "study" / "evaluate").glob("long-*/result.json"))
    runs = [json.loads(line) for line in (tmp_path / "study" / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["interrupted"] is True and runs[0]["seconds"] > 0
    import torch  # the report names each run's machine: this one's cores and GPU (or none)

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    kernels = torch.backends.cpu.get_cpu_capability()  # AVX2, AVX512, ...: what torch's CPU kernels use
    assert runs[0]["machine"].endswith(f"{kernels} kernels), {os.cpu_count()} CPUs, {gpu}")
    from fnet.study.scheduler import cpu_signature

    assert cpu_signature() in runs[0]["machine"]  # family, model, stepping on x86 Linux, else ""


def test_the_cpu_signature_tells_apart_cpus_that_a_vm_names_alike():
    from fnet.study.scheduler import cpu_signature

    def info(model):  # two processors, as /proc/cpuinfo lists them; a VM names both "AMD EPYC Processor"
        block = (
            f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
            "model name\t: AMD EPYC Processor\nstepping\t: 1\n\n"
        )
        return block.format(0) + block.format(1).replace(f"model\t\t: {model}", "model\t\t: 999")

    assert cpu_signature(info(17)) == "family 25 model 17 stepping 1"  # the first processor's, not the last's
    assert cpu_signature(info(17)) != cpu_signature(info(160))
    assert cpu_signature("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n") == ""  # no x86 fields


def test_the_environment_key_follows_data_bytes_not_modification_times(tmp_path, monkeypatch):
    from fnet.study.scheduler import environment_key, environment_parts

    repo, data = tmp_path / "repo", tmp_path / "data"
    (repo / "fnet" / "study").mkdir(parents=True)
    (repo / "conf").mkdir()
    (repo / "fnet" / "a.py").write_text("x = 1\n")
    (repo / "fnet" / "study" / "cli.py").write_text("y = 1\n")
    data.mkdir()
    (data / "rows.csv").write_text("text,label\nhi,1\n")
    monkeypatch.setenv("FNET_DATA_DIR", str(data))
    key = environment_key(repo)
    os.utime(data / "rows.csv", ns=(1, 1))  # re-provisioned: same bytes, another time
    (repo / "fnet" / "study" / "cli.py").write_text("y = 2\n")  # the study's own code is not in the key
    assert environment_key(repo) == key
    (data / "rows.csv").write_text("text,label\nhi,0\n")  # same size, other bytes
    changed = environment_parts(repo)
    assert environment_key(repo) != key and changed["code"] == environment_parts(repo)["code"]
    (data / "rows.csv").write_text("text,label\nhi,1\n")
    (repo / "fnet" / "a.py").write_text("x = 2\n")
    assert environment_key(repo) != key


def test_adopt_moves_only_the_same_jobs_to_their_new_keys_and_a_rerun_recomputes_nothing(fake):
    from fnet.study.rekey import adopt_jobs

    _run(fake, _jobs())
    old_x = next((fake / "study" / "evaluate").glob("a_x-*/result.json"))
    with pytest.raises(ValueError, match="reason"):
        adopt_jobs(_jobs(), fake / "study", reason=" ", env_key="env1", log=lambda *_: None)
    # y's plan changed since it ran: it is another job and must not be adopted
    jobs = _jobs()
    jobs[2] = Job("evaluate/a/y", "evaluate", ["fake.py"], ["name=y", "ckpt={train/a}", "extra=1"], ["train/a"])
    counts = adopt_jobs(jobs, fake / "study", reason="data re-provisioned", env_key="env1", log=lambda *_: None)
    assert counts["adopted"] == 2 and counts["differ"] == ["evaluate/a/y"]
    result = _run(fake, jobs, env_key="env1")
    assert _calls(fake) == ["train", "x", "y", "y"]  # only the changed job ran
    assert result["counts"]["skipped"] == 2
    new_x = next(p for p in (fake / "study" / "evaluate").glob("a_x-*") if not p.is_symlink())
    record = json.loads((new_x / "job.json").read_text())
    assert record["adopted"]["reason"] == "data re-provisioned" and record["status"] == "done"
    new_ckpt = next(p for p in (fake / "study" / "train").glob("*") if not p.is_symlink())
    assert any(str(new_ckpt) in o for o in record["overrides"])  # the input's new folder, not the old
    assert old_x.read_text() == (new_x / "result.json").read_text()  # the old path still resolves (a link)
    again = adopt_jobs(jobs, fake / "study", reason="again", env_key="env1", log=lambda *_: None)
    assert again["adopted"] == 0 and again["current"] == 3


def test_table_order_gives_every_task_its_all_networks_lesion_before_any_per_network_or_preservation_job():
    by_task = plan(load_preset("smollm2", ["order=task"]))
    jobs = plan(load_preset("smollm2", ["order=table"]))
    assert sorted(j.name for j in jobs) == sorted(j.name for j in by_task)  # the same jobs, another order
    names = [j.name for j in jobs]
    for j in jobs:
        assert all(names.index(d) < names.index(j.name) for d in j.deps)
    last_all = max(names.index(f"evaluate/finetune/{t}/raw/lesion/all") for t in ("sst2", "squad", "mnli"))
    first_each = names.index("evaluate/finetune/sst2/raw/lesion/net0")
    first_preserve = min(i for i, j in enumerate(jobs) if j.meta.get("condition", "").startswith("preserve"))
    assert last_all < first_each < first_preserve
    assert names.index("analyze/squad/K10/raw") < names.index("analyze/sst2/K64/raw")
    with pytest.raises(ValueError, match="order must be one of \\['task', 'table'\\], got 'tasks'"):
        load_preset("tiny", ["order=tasks"])


def test_adopt_picks_the_old_run_with_the_same_settings_among_several(fake):
    from fnet.study.rekey import adopt_jobs

    _run(fake, _jobs(lr="0.2"))
    _run(fake, _jobs(lr="0.1"))  # two finished x: lr=0.2 and lr=0.1
    counts = adopt_jobs(_jobs(lr="0.1"), fake / "study", reason="r", env_key="env1", log=lambda *_: None)
    assert counts["adopted"] == 3 and counts["differ"] == []
    result = _run(fake, _jobs(lr="0.1"), env_key="env1")
    assert result["counts"]["skipped"] == 3 and len(_calls(fake)) == 4  # train, x, y, x: nothing ran again
    x = [p for p in (fake / "study" / "evaluate").glob("a_x-*") if not p.is_symlink()]
    adopted = [json.loads((p / "job.json").read_text()) for p in x if "adopted" in (p / "job.json").read_text()]
    assert len(adopted) == 1 and "lr=0.1" in adopted[0]["overrides"]


def test_the_dry_run_estimate_scales_measured_jobs(tmp_path):
    """Planted reference: SST-2 evaluate jobs took 20 s for 200 rows (0.1 s a row), analyze K=10 40 s, training
    300 s. A plan of one unmasked job on 100 rows (task.limit), one analyze job and a training run of 2 preset
    minutes costs 10 + 40 + 120 s; jobs of a stage the reference never saw for the task take the stage median."""
    from fnet.study.estimate import estimate
    from fnet.study.scheduler import Job

    (tmp_path / "jobs.csv").write_text(
        "name,stage,status,key,seconds,finished\n"
        "evaluate/finetune/sst2/unmasked,evaluate,ran,k,20,t\nanalyze/sst2/K10/raw,analyze,ran,k,40,t\n"
        "train/sst2,train,ran,k,300,t\nanalyze/cola/K10/raw,analyze,ran,k,60,t\n"
    )
    (tmp_path / "summary.csv").write_text("task,condition,n_rows\nsst2,unmasked,200\n")
    jobs = [
        Job(
            "evaluate/finetune/sst2/unmasked",
            "evaluate",
            ["evaluate.py"],
            ["task.limit=100"],
            [],
            {"task": "sst2", "path": "finetune"},
        ),
        Job("analyze/sst2/K10/raw", "analyze", ["analyze.py"], [], [], {"scope": "sst2", "K": 10}),
        Job("analyze/mrpc/K10/raw", "analyze", ["analyze.py"], [], [], {"scope": "mrpc", "K": 10}),
        Job("train/sst2", "train", ["train.py"], [], [], {"task": "sst2"}),
    ]
    e = estimate(jobs, {"train_minutes": {"sst2": 2}}, reference=tmp_path)
    assert e["jobs"] == {
        "evaluate/finetune/sst2/unmasked": 10.0,
        "analyze/sst2/K10/raw": 40.0,
        "analyze/mrpc/K10/raw": 50.0,
        "train/sst2": 120.0,
    }
    assert e["hours"] == pytest.approx(220 / 3600)


def test_an_archived_study_restored_elsewhere_without_its_checkpoint_recomputes_nothing(fake):
    """--archive leaves the checkpoint behind (its digest kept); restored into another folder, every job still
    counts as finished under the same keys; a new job that needs the checkpoint fails before it starts, and says so."""
    from fnet.study.archive import archive_units, restore

    jobs = _jobs()
    jobs[0].overrides.append("weights=" + "w" * 5000)  # a 'checkpoint' over the archive's limit below
    first = _run(fake, jobs)
    (fake / "study" / "runs.jsonl").write_text('{"machine": "a"}\n')
    figure = next((fake / "study" / "evaluate").glob("a_x-*")) / "figures" / "f.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")  # small, but a figure: the report draws its own
    (figure.parent.parent / "networks").mkdir()
    (figure.parent.parent / "networks" / "task_group.safetensors").write_bytes(b"n")  # not the job's output
    done = archive_units(jobs, first["jobs"], fake / "study", fake / "archive", max_mb=0.001)
    assert done["units"] == ["a"] and done["jobs"] == 3
    assert not list((fake / "archive").rglob("*.ckpt"))  # left behind, listed with its digest
    (note,) = (fake / "archive" / "train").glob("*/archived.json")
    assert list(json.loads(note.read_text())["files"]) == ["checkpoints/best-0-1.ckpt"]
    (drawn,) = (fake / "archive" / "evaluate").glob("a_x-*/archived.json")
    assert sorted(json.loads(drawn.read_text())["files"]) == ["figures/f.png", "networks/task_group.safetensors"]
    assert (drawn.parent / "result.json").exists()  # the job's output stays
    assert archive_units(jobs, first["jobs"], fake / "study", fake / "archive", max_mb=0.001)["kept"] == 3

    elsewhere = fake / "other machine" / "study"
    assert restore(fake / "archive", elsewhere) == 3
    assert (elsewhere / "runs.jsonl").read_text() == '{"machine": "a"}\n'  # the run log travels with the jobs
    second = run_jobs(jobs, elsewhere, cwd=fake, log=lambda *_: None, env_key="env0")
    assert _calls(fake) == ["train", "x", "y"]  # nothing ran again: same keys in another folder
    assert second["counts"]["skipped"] == 3

    more = jobs + [Job("evaluate/a/z", "evaluate", ["fake.py"], ["name=z", "ckpt={train/a}"], ["train/a"])]
    third = run_jobs(more, elsewhere, cwd=fake, log=lambda *_: None, env_key="env0")
    assert _calls(fake) == ["train", "x", "y"] and third["counts"]["failed"] == 1
    (failed,) = [r for r in third["jobs"] if r["status"] == "failed"]
    assert (
        failed["name"] == "evaluate/a/z" and "archived without it" in failed["why"] and "archived.json" in failed["why"]
    )


def test_archive_takes_only_training_runs_whose_jobs_all_finished(fake):
    from fnet.study.archive import archive_units

    (fake / "fail_y").write_text("")
    first = _run(fake, _jobs())
    assert first["counts"]["failed"] == 1
    done = archive_units(_jobs(), first["jobs"], fake / "study", fake / "archive")
    assert done == {"units": [], "jobs": 0, "kept": 0, "bytes": 0} and not (fake / "archive").exists()
