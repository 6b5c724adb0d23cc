"""Issue 24: every fault gets a clear answer before work starts, and a killed study never runs a job twice.

:data:`FAULTS` is the one table of bad input. Each row runs a command line (in the repository, as a user types it)
or a call, and says what must come back: the exit code (or the exception) and the fragments its message holds,
which name the problem, the key and the valid choices. A new fault is one row. The faults that gave no error at
all (a seed that changed nothing, a dtype that was ignored, ...) and the kill -9 race are tested below the table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    """One row: ``run`` is a command line (``python`` + these arguments, ``{tmp}`` replaced by the test's folder)
    or a call ``run(tmp, monkeypatch)``; ``expect`` is its exit code (a call's return value, its output read from
    stdout and stderr) or the exception it raises; ``says``: fragments of the message; ``setup(tmp)`` runs first;
    ``not_made``: paths under ``tmp`` that must not exist afterwards (the work that must not have started)."""

    case: str
    run: tuple[str, ...] | Callable[[Path, Any], Any]
    expect: int | type[BaseException]
    says: tuple[str, ...]
    setup: Callable[[Path], Any] | None = None
    not_made: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------------
# calls of the rows
# --------------------------------------------------------------------------------------------------------------
def _record_nothing(tmp: Path, _mp) -> Any:
    import fnet

    return fnet.record(fnet.load_model("tiny:gpt2"), [], cache_dir=tmp / "cache")


def _empty_stimulus_file(tmp: Path, _mp) -> Any:
    from fnet.recording.stimuli import load_stimulus_sets

    return load_stimulus_sets({"mine": {"source": f"file:{tmp / 'empty.jsonl'}"}}, n_template=1, n_individual=0)


def _builtin_corpus_missing(tmp: Path, mp) -> Any:
    """A wheel without the built-in corpus (packaging is another issue): the lookup pointed at an empty folder."""
    import fnet.recording.sources as sources

    mp.setattr(sources, "CORPUS_DIR", tmp / "corpus")
    return sources.load_texts("builtin:news")


def _presets_missing(tmp: Path, mp) -> Any:
    import fnet.study.preset as preset
    from fnet.study.cli import main

    mp.setattr(preset, "preset_dir", lambda: tmp / "conf" / "study")
    return main(["tiny", "--dry-run", "--root", str(tmp / "study")])


def _task_configs_missing(tmp: Path, mp) -> Any:
    import fnet.scoring.tasks as tasks

    mp.setattr(tasks, "task_config_dir", lambda: tmp / "conf" / "task")
    return tasks.load_task_config("sst2")


def _validated(name: str, *overrides: str) -> Callable[[Path, Any], Any]:
    """The check an entry point makes first (``validate_config`` of the composed config), on these overrides."""

    def run(tmp: Path, _mp) -> Any:
        from hydra import compose, initialize_config_dir

        from fnet.pipelines.config import register_configs, validate_config

        register_configs()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(name, overrides=list(overrides))
        return validate_config(cfg, name)

    return run


def _command(tmp: Path, *argv: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", FNET_CACHE=str(tmp / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _sweep_report(tmp: Path, _mp) -> Any:
    from fnet.report.sweep import main

    return main([str(tmp / "sweep")])


#: the code key of a study report made by other code than this checkout's
OTHER_CODE = "0123456789abcdef"


def _study_source(tmp: Path, name: str, finished: list[str], *sets: str, code: str | None = "this") -> Path:
    """A committed tiny study report (tests/test_study_compose.py's) that finished the parts ``finished``, made
    by this checkout's code (``code="this"``), by other code, or by a runner that recorded none (None)."""
    from test_study_compose import SETS, _source

    from fnet.study.preset import load_preset

    planted = {
        "sst2": (0.90, 0.55, 0.88, 0.33, (0.25, 0.41)),
        "sst2 (zero-shot)": (0.80, 0.70, 0.78, 0.08, (0.01, 0.15)),
        "ag_news": (0.85, 0.80, 0.70, -0.10, (-0.18, -0.03)),
    }
    return _source(
        tmp / name, load_preset("tiny", SETS + list(sets)), finished, planted, machine=f"machine {name}", code=code
    )


def _compose(*sets: str) -> Callable[[Path, Any], Any]:
    def run(tmp: Path, _mp) -> Any:
        from test_study_compose import SETS

        from fnet.study.cli import main

        return main(
            [
                "tiny",
                *SETS,
                *sets,
                "--compose",
                str(tmp / "a"),
                "--compose",
                str(tmp / "b"),
                "--report-dir",
                str(tmp / "out"),
            ]
        )

    return run


#: analyze.py in seconds, its run folder and cache under the test's folder
ANALYZE = ("analyze.py", "debug=default", "logger=none", "hydra.run.dir={tmp}/run")


FAULTS = [
    Fault(
        "6 record no texts",
        _record_nothing,
        ValueError,
        ("no texts to record", "got an empty list"),
        not_made=("cache/activations",),
    ),
    Fault(
        "9 empty jsonl stimulus file",
        _empty_stimulus_file,
        ValueError,
        ("data set 'mine'", "empty.jsonl", "is empty", "one JSON record per line"),
        setup=lambda tmp: (tmp / "empty.jsonl").write_text("\n  \n"),
    ),
    Fault(
        "7 data.n_template=0",
        (*ANALYZE, "data.n_template=0"),
        1,
        ("invalid config `analyze`", "data.n_template must be > 0, got 0"),
        not_made=("run/networks", "cache/activations"),
    ),
    Fault(
        "7 data.datasets.<name>.n_template=0",
        _validated("analyze", "debug=default", "+data.datasets.news.n_template=0"),
        ValueError,
        ("data.datasets.news.n_template must be > 0, got 0",),
    ),
    Fault(
        "8 ica.n_components=0",
        _validated("analyze", "debug=default", "ica.n_components=0"),
        ValueError,
        ("ica.n_components must be >= 1, got 0",),
    ),
    Fault(
        "8 ica.n_components above the model's neurons",
        _validated("analyze", "debug=default", "ica.n_components=100000"),
        ValueError,
        (
            "invalid config `analyze`",
            "ica.n_components must be <= 96, the number of mlp_out neurons of tiny:gpt2 (3 layers x 32), got 100000",
        ),
    ),
    Fault(
        "8 ica.n_components above the model's mlp_act neurons (evaluate)",
        _validated("evaluate", "debug=evaluate", "record.signal=mlp_act", "ica.n_components=385"),
        ValueError,
        ("ica.n_components must be <= 384, the number of mlp_act neurons of tiny:gpt2 (3 layers x 128), got 385",),
    ),
    Fault(
        "4 sweep report of an analyze multirun",
        _sweep_report,
        0,
        ("1 finished jobs (1 analyze), 0 failed.", "## Analysis jobs", "ica.n_components=3", "report.md"),
        setup=lambda tmp: _command(
            tmp,
            "analyze.py",
            "-m",
            "debug=default",
            "logger=none",
            "ica.n_components=3",
            f"hydra.sweep.dir={tmp / 'sweep'}",
        ),
    ),
    Fault(
        "10 compose with other seeds",
        _compose("seeds=3"),
        2,
        (
            "no source finished the parts ['ag_news', 'sst2', 'sst2 (zero-shot)'] with the plan's settings",
            "- sst2: ",
            "/a ran other settings (its plan lacks 10 of the plan's jobs (['evaluate/finetune/sst2/preserve/K3/count/seed2'",  # noqa: E501
            "settings that differ: seeds: 2 in its report, 3 in the plan",
        ),
        setup=lambda tmp: (_study_source(tmp, "a", ["sst2", "sst2 (zero-shot)"]), _study_source(tmp, "b", ["ag_news"])),
        not_made=("out/report.md",),
    ),
    Fault(
        "10 compose from a source that did not finish a part",
        _compose(),
        2,
        (
            "no source finished the parts ['ag_news']",
            "- ag_news: ",
            "/a finished 0 of its 15 jobs (not ['train/ag_news'",
            "/b finished 0 of its 15 jobs",
        ),
        setup=lambda tmp: (_study_source(tmp, "a", ["sst2", "sst2 (zero-shot)"]), _study_source(tmp, "b", ["sst2"])),
    ),
    Fault(
        "3 compose a report made by other code",
        _compose(),
        2,
        (f"made by code `{OTHER_CODE}`", "this checkout is code `", f"--accept-code {OTHER_CODE}", "--any-code"),
        setup=lambda tmp: (
            _study_source(tmp, "a", ["sst2", "sst2 (zero-shot)"], code=OTHER_CODE),
            _study_source(tmp, "b", ["ag_news"]),
        ),
        not_made=("out/report.md",),
    ),
    Fault(
        "3 compose a report that records no code",
        _compose(),
        2,
        ("/b records no code version", "cannot be checked", "pass --any-code"),
        setup=lambda tmp: (
            _study_source(tmp, "a", ["sst2", "sst2 (zero-shot)"]),
            _study_source(tmp, "b", ["ag_news"], code=None),
        ),
        not_made=("out/report.md",),
    ),
    Fault(
        "11 built-in corpus not installed",
        _builtin_corpus_missing,
        FileNotFoundError,
        ("installation of fnet is incomplete", "corpus", "no <genre>.jsonl files"),
    ),
    Fault(
        "11 study presets not installed",
        _presets_missing,
        FileNotFoundError,
        ("installation of fnet is incomplete", "conf/study", "a preset's YAML path"),
        not_made=("study",),
    ),
    Fault(
        "11 task configs not installed",
        _task_configs_missing,
        FileNotFoundError,
        ("installation of fnet is incomplete", "conf/task"),
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.case for f in FAULTS])
def test_a_fault_gets_a_clear_answer_before_work_starts(fault: Fault, tmp_path, monkeypatch, capsys):
    if fault.setup is not None:
        fault.setup(tmp_path)
    if callable(fault.run):
        if isinstance(fault.expect, type) and issubclass(fault.expect, BaseException):
            with pytest.raises(fault.expect) as raised:
                fault.run(tmp_path, monkeypatch)
            message = str(raised.value)
        else:
            code = fault.run(tmp_path, monkeypatch)
            captured = capsys.readouterr()
            message = captured.out + captured.err
            assert code == fault.expect, message[-3000:]
    else:
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            FNET_CACHE=str(tmp_path / "cache"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            PYTHONWARNINGS="ignore",
        )
        argv = [sys.executable, *(a.replace("{tmp}", str(tmp_path)) for a in fault.run)]
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        message = proc.stdout + proc.stderr
        assert proc.returncode == fault.expect, message[-3000:]
    for fragment in fault.says:
        assert fragment in message, f"{fragment!r} not in:\n{message[-3000:]}"
    for path in fault.not_made:
        assert not (tmp_path / path).exists(), f"{path} was made: the work started"


# --------------------------------------------------------------------------------------------------------------
# silent faults: exit 0, wrong or ignored
# --------------------------------------------------------------------------------------------------------------
def test_2_model_dtype_applies_to_tiny_models_and_so_to_their_fingerprint_and_caches(tmp_path):
    """model.dtype=bfloat16 was ignored for tiny:* models: the run reused the float32 activations and the report
    said float32."""
    import fnet

    f32, b16 = fnet.load_model("tiny:gpt2"), fnet.load_model("tiny:gpt2", dtype="bfloat16")
    assert (f32.dtype, b16.dtype) == ("float32", "bfloat16")
    assert b16.identity()["model_dtype"] == "bfloat16" and b16.fingerprint != f32.fingerprint
    assert {p.dtype for p in b16.model.parameters()} == {__import__("torch").bfloat16}
    stores = [fnet.record(lm, ["a short text to record"], max_length=16, cache_dir=tmp_path) for lm in (f32, b16)]
    assert stores[0].root != stores[1].root  # another dtype is another model: recorded again, not reused
    assert fnet.load_model("tiny:gpt2", dtype="auto").dtype == "float32"  # auto: the model's own


def _seeded_start(seed: int, model_by_name: bool) -> dict:
    """What train.py does before fitting, on a tiny model: seed, load the model (or let the module load it by name,
    as a checkpoint is rebuilt), build the classification head, draw the first epoch's order of training rows."""
    import lightning.pytorch as pl

    from fnet.lit.classification import SequenceClassificationModule
    from fnet.lit.datamodules import TaskDataModule
    from fnet.models import load_model

    pl.seed_everything(seed, workers=True)
    module = SequenceClassificationModule("tiny:gpt2" if model_by_name else load_model("tiny:gpt2"), num_labels=2)
    rows = [
        {"text_a": f"row {i} was {'great' if i % 2 else 'awful'}", "text_b": None, "label": i % 2, "index": i}
        for i in range(40)
    ]
    data = TaskDataModule("sst2", tokenizer=module.tokenizer, rows=rows, batch_size=4, max_length=24)
    data.setup("fit")
    order = [int(i) for batch in data.train_dataloader() for i in batch["row_index"]]
    backbone = {k: v.clone() for k, v in module.model.state_dict().items()}
    return {"head": module.score.weight.detach().clone(), "order": order, "backbone": backbone}


@pytest.mark.parametrize("model_by_name", [False, True], ids=["loaded LM", "LM loaded by the module"])
def test_1_the_training_seed_reaches_the_head_and_the_data_order_and_the_model_seed_only_the_weights(model_by_name):
    """train.py seed=0 and seed=1 gave identical checkpoints on tiny models: tiny_model called
    torch.manual_seed(<model seed>) after pl.seed_everything(seed), resetting the global RNG."""
    import torch

    from fnet.models import load_model

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    load_model("tiny:gpt2", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # building a tiny model leaves the global RNG alone
    a, b, a_again = _seeded_start(0, model_by_name), _seeded_start(1, model_by_name), _seeded_start(0, model_by_name)
    assert not torch.equal(a["head"], b["head"]) and a["order"] != b["order"]  # the training seed reaches both
    assert torch.equal(a["head"], a_again["head"]) and a["order"] == a_again["order"]  # and decides them
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])  # same model (seed 0)


def test_1_train_py_with_two_seeds_gives_two_checkpoints(tmp_path):
    """The whole path of train.py debug=train (in process): two training seeds, two different trained heads."""
    import torch
    from hydra import compose, initialize_config_dir

    from fnet.pipelines.config import register_configs, validate_config
    from fnet.pipelines.train import run_training

    register_configs()
    heads = []
    for seed in (0, 1):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    "debug=train",
                    f"seed={seed}",
                    "logger=none",
                    "test_after_fit=false",
                    "~callbacks.progress_bar",
                    f"paths.output_dir={tmp_path / str(seed)}",
                    f"paths.root_dir={REPO}",
                ],
            )
        validate_config(cfg, "train")
        result = run_training(cfg)
        state = torch.load(result["checkpoints"]["best"], map_location="cpu", weights_only=False)["state_dict"]
        heads.append(state["score.weight"])
    assert not torch.equal(heads[0], heads[1])


def test_3_a_study_report_records_its_code_and_compose_takes_other_code_only_when_told(tmp_path, capsys):
    """--compose never checked the code version of the folders it read, and the composed report recorded none."""
    from test_study_compose import SETS

    from fnet.study.cli import main
    from fnet.study.compose import read_source
    from fnet.study.scheduler import code_key

    this = code_key()
    a = _study_source(tmp_path, "a", ["sst2", "sst2 (zero-shot)"], code=OTHER_CODE)
    b = _study_source(tmp_path, "b", ["ag_news"])
    assert read_source(a)["codes"] == [OTHER_CODE] and read_source(b)["codes"] == [this]
    compose = ["tiny", *SETS, "--compose", str(a), "--compose", str(b)]
    assert main([*compose, "--report-dir", str(tmp_path / "out"), "--accept-code", OTHER_CODE]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Code: `{this}` (../b); `{OTHER_CODE}` (../a, accepted with --accept-code)." in report
    assert "| code " in report and read_source(tmp_path / "out")["codes"] == [this, OTHER_CODE]
    assert main([*compose, "--report-dir", str(tmp_path / "any"), "--any-code"]) == 0  # any code, recorded or not
    assert main([*compose, "--report-dir", str(tmp_path / "bad"), "--accept-code", "fedcba9876543210"]) == 2
    assert f"made by code `{OTHER_CODE}`" in capsys.readouterr().err


def test_3_results_paper_smollm2_composes_byte_for_byte_from_its_sources_with_the_readme_command(tmp_path):
    """The committed composed report, made from five study reports that predate recorded code keys (so the
    README's command says --any-code), composes again byte for byte."""
    import re
    import shlex
    import shutil

    readme = (REPO / "README.md").read_text()
    command = re.search(
        r"```bash\n(python -m fnet\.study smollm2 --report-dir results/paper_smollm2 [^`]*?)\n```", readme
    ).group(1)
    argv = shlex.split(command.replace("\\\n", " "))[3:]
    sources = [argv[i + 1] for i, a in enumerate(argv) if a == "--compose"]
    assert "--any-code" in argv and len(sources) == 5
    for folder in sources:
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "fnet.study", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    made, committed = tmp_path / "results" / "paper_smollm2", REPO / "results" / "paper_smollm2"
    assert sorted(p.name for p in made.iterdir()) == sorted(p.name for p in committed.iterdir())
    for path in committed.iterdir():
        assert (made / path.name).read_bytes() == path.read_bytes(), path.name


# --------------------------------------------------------------------------------------------------------------
# race: kill -9 of a study runner, then a rerun at once
# --------------------------------------------------------------------------------------------------------------
FAKE_TRAIN = """
import json, os, pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = pathlib.Path(args["hydra.run.dir"])
with open(out / "writers.txt", "a") as f:
    f.write(f"{os.getpid()}\\n")
(out / "result.json").write_text(json.dumps({"name": args["name"]}))
"""

#: the real batch worker (fnet.pipelines.evaluate_batch.main: its folders, locks and markers) with a fake evaluate
#: that writes its pid into the job folder, waits for the gate file to exist, writes its pid again and then the
#: result, which counts the writes and the writers
FAKE_BATCH = """
import json, os, pathlib, sys, time
import fnet.pipelines.evaluate_batch as batch

def compose(conf_dir, overrides, folder, root):
    return {"folder": str(folder), "args": dict(o.split("=", 1) for o in overrides)}

def evaluate(cfg, job_overrides=None, models=None):
    folder, gate = pathlib.Path(cfg["folder"]), pathlib.Path(cfg["args"]["gate"])
    for step in range(2):
        with open(folder / "writers.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
        while not gate.exists():
            time.sleep(0.02)
    writes = (folder / "writers.txt").read_text().split()
    (folder / "result.json").write_text(json.dumps({"name": cfg["args"]["name"], "writes": len(writes),
                                                    "writers": len(set(writes))}))

batch._compose, batch.validate_config, batch.evaluate = compose, lambda cfg, name: cfg, evaluate
sys.exit(batch.main())
"""


def _study_jobs(gate: Path) -> list:
    from fnet.study import Job

    jobs = [Job("train/t", "train", ["fake_train.py"], ["name=t"], [], {"task": "t"})]
    return jobs + [
        Job(
            f"evaluate/t/{i}",
            "evaluate",
            ["evaluate.py"],
            [f"name={i}", f"gate={gate}", "ckpt={train/t}"],
            ["train/t"],
            {"task": "t"},
        )
        for i in range(6)
    ]


def _fake_batch(call: Callable, here: Path) -> Callable:
    def run(argv, **kwargs):  # the batch worker's command, with the fake evaluate
        if argv[1:3] == ["-m", "fnet.pipelines.evaluate_batch"]:
            argv = [argv[0], str(here / "fake_batch.py"), *argv[3:]]
        return call(argv, **kwargs)

    return run


#: python runner.py ROOT GATE: python -m fnet.study with the fake jobs
RUNNER = """
import sys
from pathlib import Path
from fnet.study import run_jobs, scheduler
from fnet.study import cli as runner
from test_faults import _fake_batch, _study_jobs
here = Path(__file__).parent
runner.plan = lambda preset: _study_jobs(Path(sys.argv[2]))
scheduler._call = _fake_batch(scheduler._call, here)
runner.run_jobs = lambda jobs, root, **kw: run_jobs(jobs, root, cwd=here, **dict(kw, env_key="e"))
sys.exit(runner.main(["tiny", "--root", sys.argv[1], "--no-report"]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by whoever adopted it) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _results(root: Path) -> dict:
    import json

    return {
        r["name"]: r
        for r in (
            json.loads(p.read_text())
            for p in (root / "evaluate").glob("*/result.json")
            if ".interrupted-" not in p.parent.name
        )
    }


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 180) -> None:
    import time

    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_5_a_study_runner_killed_with_sigkill_takes_its_batch_worker_along_and_a_rerun_runs_no_job_twice(
    tmp_path, monkeypatch
):
    """kill -9 of python -m fnet.study left its evaluate_batch worker running; a rerun started at once started a
    second worker on the same jobs, and both wrote into the same job folders. Here the killed run's worker is held
    inside its first job (by a gate file) until the rerun has set its folders up and started its own worker."""
    import signal

    from fnet.study import run_jobs, scheduler

    for name, text in (("fake_train.py", FAKE_TRAIN), ("fake_batch.py", FAKE_BATCH), ("runner.py", RUNNER)):
        (tmp_path / name).write_text(text)
    path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)  # this checkout's fnet, in every process
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(scheduler, "_call", _fake_batch(scheduler._call, tmp_path))
    (tmp_path / "open").touch()
    reference = run_jobs(
        _study_jobs(tmp_path / "open"), tmp_path / "ref", cwd=tmp_path, env_key="e", batch=32, log=lambda *_: None
    )  # uninterrupted
    assert reference["counts"]["ran"] == 7, reference

    root, gate, batches = tmp_path / "study", tmp_path / "gate", tmp_path / "study" / "batches"
    runner = [sys.executable, str(tmp_path / "runner.py"), str(root), str(gate)]
    first = subprocess.Popen(runner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: list((root / "evaluate").glob("*/writers.txt")), "the batch worker's first job")
    worker = int(next((root / "evaluate").glob("*/writers.txt")).read_text().split()[0])
    first.send_signal(signal.SIGKILL)  # kill -9 while the worker is inside a job
    first.wait()
    second = subprocess.Popen(runner, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sys.platform.startswith("linux"):  # the kernel kills it with its runner (elsewhere: within a poll period)
        _wait_for(lambda: not _alive(worker), "the killed runner's batch worker to die", 5)
    _wait_for(lambda: len(list(batches.glob("*.json"))) == 2 or second.poll() is not None, "the rerun's batch")
    gate.touch()  # a surviving worker would now go on writing, into the folders the rerun made afresh
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out[-2000:] + err[-3000:]

    folders = [p for p in (root / "evaluate").iterdir() if p.is_dir()]
    assert any(".interrupted-" in p.name for p in folders)  # the killed run's unfinished job, set aside
    for folder in folders:  # no job folder was written by two processes
        writers = set((folder / "writers.txt").read_text().split()) if (folder / "writers.txt").exists() else set()
        assert len(writers) <= 1, f"{folder.name} was written by processes {sorted(writers)}"
    assert _results(root) == _results(tmp_path / "ref") and len(_results(root)) == 6  # as if never interrupted
    assert all(r["writes"] == 2 and r["writers"] == 1 for r in _results(root).values())
