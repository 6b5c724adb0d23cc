"""Fine-tuning from cached lower-block features (fnet.lit.features, fnet.lit.lower_blocks) and LoRA (fnet.lit.lora)
on tiny models: the same weights as the uncached run, cache keys, corrupt entries, what LoRA trains."""

from __future__ import annotations

import json

import lightning as L
import lightning.pytorch as pl
import pytest
import torch

from fnet.lit.checkpoints import load_finetuned_lm
from fnet.lit.classification import SequenceClassificationModule, final_hidden_states
from fnet.lit.datamodules import TaskDataModule
from fnet.lit.features import KIND, cached_feature_data
from fnet.lit.lower_blocks import LowerBlocksError, find_lower_blocks
from fnet.lit.qa import ExtractiveQAModule
from fnet.models import find_blocks, load_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread_and_own_cache(tmp_path, monkeypatch):
    """One intra-op thread (a shared CPU), and a cache root of the test's own."""
    monkeypatch.setenv("FNET_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_rows(n: int = 40, tag: str = "") -> list[dict]:
    rows = []
    for i in range(n):
        word = "great" if i % 2 else "awful"
        filler = " ".join(["the film was"] * (1 + i % 3))  # lengths differ: batches are padded
        rows.append({"text_a": f"{filler} {word}{tag} {i}", "text_b": None, "label": i % 2, "index": i})
    return rows


def _data(lm, rows=None, side="right", max_length=32):
    dm = TaskDataModule(
        "sst2",
        tokenizer=lm.tokenizer,
        rows=rows or toy_rows(),
        batch_size=8,
        eval_batch_size=8,
        split=(0.7, 0.1, 0.2),
        padding_side=side,
        max_length=max_length,
    )
    dm.setup("fit")
    return dm


def _module(lm, trainable_layers=1, lora=None):
    optimizer = lambda groups: torch.optim.AdamW(groups, lr=1e-2)  # noqa: E731 - big steps: differences show
    return SequenceClassificationModule(
        lm, num_labels=2, trainable_layers=trainable_layers, lora=lora, optimizer=optimizer
    )


def _fit(module, data, steps=5):
    pl.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=steps,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def _train(family, cached, side="right", lora=None, trainable_layers=1, block0_calls=None):
    """Trained parameters (and the initial ones) of a few steps on the toy task, cached or not."""
    pl.seed_everything(0)
    lm = load_model(f"tiny:{family}")
    module = _module(lm, 0 if lora else trainable_layers, lora)
    init = {k: v.detach().clone() for k, v in module.named_parameters()}
    dm = _data(lm, side=side)
    data = cached_feature_data(module, dm, fingerprint=lm.fingerprint, dtype=lm.dtype)[0] if cached else dm
    if block0_calls is not None:
        find_blocks(lm.model)[0].register_forward_hook(lambda *_: block0_calls.append(1))
    _fit(module, data)
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}, init


# ---------------------------------------------------------------------------------------------------------------
# Cached == uncached
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_cached_features_train_the_same_weights(family, side):
    """Same seed, same batches: the top block, final norm and head end where the uncached run ends, and the cached
    run never runs block 0 while training (so the comparison is not of two uncached runs)."""
    uncached, init = _train(family, cached=False, side=side)
    calls: list = []
    cached, _ = _train(family, cached=True, side=side, block0_calls=calls)
    assert set(cached) == set(uncached) and any(k.startswith("score") for k in cached)
    assert not calls, f"block 0 ran {len(calls)} times while training from cached features"
    moved = max((uncached[k] - init[k]).abs().max().item() for k in uncached)
    assert moved > 1e-3
    for name in uncached:
        torch.testing.assert_close(cached[name], uncached[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cached_features_with_a_wrong_padding_side_would_differ():
    """The check above has teeth: states placed on the wrong side of the padding train other weights."""
    from fnet.lit import features

    uncached, _ = _train("llama", cached=False, side="left")
    original = features.FeatureCollator.__init__

    def wrong_side(self, inner, store, padding_side):
        original(self, inner, store, "right")

    features.FeatureCollator.__init__ = wrong_side
    try:
        cached, _ = _train("llama", cached=True, side="left")
    finally:
        features.FeatureCollator.__init__ = original
    assert max((cached[k] - uncached[k]).abs().max().item() for k in uncached) > 1e-4


def test_qa_module_trains_the_same_from_cached_features():
    from fnet.lit.datamodules import SquadDataModule

    rows = [
        {
            "id": str(i),
            "index": i,
            "title": "t",
            "context": f"The answer number {i} is blue{i} and more text here.",
            "question": f"What is {i}?",
            "answers": [f"blue{i}"],
            "text_a": "",
            "text_b": None,
            "label": -1,
        }
        for i in range(24)
    ]
    results = []
    for cached in (False, True):
        pl.seed_everything(0)
        lm = load_model("tiny:llama")
        module = ExtractiveQAModule(lm, trainable_layers=1, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2))
        dm = SquadDataModule(tokenizer=lm.tokenizer, rows=rows, max_length=48, doc_stride=16, batch_size=4)
        dm.setup("fit")
        data = cached_feature_data(module, dm, fingerprint=lm.fingerprint, dtype=lm.dtype)[0] if cached else dm
        _fit(module, data, steps=3)
        results.append({k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad})
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Cache keys and entries
# ---------------------------------------------------------------------------------------------------------------
def _keys(lm, module, dm):
    _, info = cached_feature_data(module, dm, fingerprint=lm.fingerprint, dtype=lm.dtype)
    return {split: (e["key"], e["hit"]) for split, e in info["entries"].items()}, info


def test_cache_key_follows_rows_max_length_blocks_and_weights():
    lm = load_model("tiny:gpt2")
    first, info = _keys(lm, _module(lm), _data(lm))
    assert info["lower_blocks"]["split"] == 2 and not any(hit for _, hit in first.values())
    again, _ = _keys(lm, _module(lm), _data(lm))  # same content: every split reused
    assert {s: k for s, (k, _) in again.items()} == {s: k for s, (k, _) in first.items()}
    assert all(hit for _, hit in again.values())
    changed = {
        "rows": _keys(lm, _module(lm), _data(lm, rows=toy_rows(tag="!")))[0],
        "max_length": _keys(lm, _module(lm), _data(lm, max_length=31))[0],
        "N": _keys(lm, _module(lm, trainable_layers=2), _data(lm))[0],
    }
    other = load_model("tiny:gpt2")
    with torch.no_grad():
        find_blocks(other.model)[0].mlp.c_fc.weight.add_(0.01)  # a lower block's weights
    other.refresh_fingerprint()
    changed["weights"] = _keys(other, _module(other), _data(other))[0]
    for what, keys in changed.items():
        assert keys["train"][0] != first["train"][0] and not keys["train"][1], what


def test_corrupt_entry_is_quarantined_and_recomputed(tmp_path):
    lm = load_model("tiny:gpt2")
    module = _module(lm)
    data, info = cached_feature_data(module, _data(lm), fingerprint=lm.fingerprint, dtype=lm.dtype)
    entry = tmp_path / "cache" / KIND / info["entries"]["train"]["key"]
    before = data.stores["train"].row(3).clone()
    assert json.loads((entry / "manifest.json").read_text())["provenance"]["fnet_code"]
    raw = bytearray((entry / "hidden.npy").read_bytes())
    raw[-8:] = b"\xff" * 8  # a damaged row: the digest no longer matches
    (entry / "hidden.npy").write_bytes(bytes(raw))
    data, info = cached_feature_data(module, _data(lm), fingerprint=lm.fingerprint, dtype=lm.dtype)
    assert not info["entries"]["train"]["hit"] and info["entries"]["test"]["hit"]
    assert list(entry.parent.glob(f"{entry.name}.corrupt-*")), "the corrupt entry was not moved aside"
    torch.testing.assert_close(data.stores["train"].row(3), before)
    (entry / "manifest.json").write_text("{not json")
    _, info = cached_feature_data(module, _data(lm), fingerprint=lm.fingerprint, dtype=lm.dtype)
    assert not info["entries"]["train"]["hit"]
    assert len(list(entry.parent.glob(f"{entry.name}.corrupt-*"))) == 2


def test_lower_blocks_refuses_what_it_cannot_store():
    lm = load_model("tiny:gpt2")
    everything = _module(lm, trainable_layers=None)  # block 0 trains: nothing frozen below it
    with pytest.raises(LowerBlocksError, match="block 0 trains"):
        find_lower_blocks(everything.model, final_hidden_states)
    lm = load_model("tiny:gpt2")
    module = _module(lm, trainable_layers=1)
    lm.model.get_input_embeddings().weight.requires_grad_(True)  # an embedding that trains runs before the blocks
    with pytest.raises(LowerBlocksError, match="run before the blocks"):
        find_lower_blocks(module.model, final_hidden_states)


def test_states_that_depend_on_padding_are_refused():
    """The ChatGLM stand-in counts positions from the first slot, padding included: left-padded rows' states
    differ from the rows alone, so they cannot be stored per row."""
    lm = load_model("tiny:chatglm")
    module = _module(lm, trainable_layers=1)
    with pytest.raises(LowerBlocksError, match="depend on padding"):
        cached_feature_data(module, _data(lm, side="left"), fingerprint=lm.fingerprint, dtype=lm.dtype)
    _, info = cached_feature_data(module, _data(lm, side="right"), fingerprint=lm.fingerprint, dtype=lm.dtype)
    assert info["built"] == 3  # right padding: positions of real tokens are unchanged


# ---------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_trains_only_adapters_and_head(family, tmp_path):
    pl.seed_everything(0)
    lm = load_model(f"tiny:{family}")
    module = _module(lm, trainable_layers=0, lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("score.") for n in trainable)
    assert any(n.startswith("score.") for n in trainable)
    n_blocks = len(find_blocks(lm.model))
    assert len({n.split(".lora_")[0] for n in trainable if ".lora_" in n}) == module.lora["n_adapted"] >= 2 * n_blocks
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_B" in n}
    trainer = _fit(module, _data(lm), steps=4)
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    assert max((p - lora_b[n]).abs().max().item() for n, p in module.named_parameters() if n in lora_b) > 1e-4
    # the checkpoint reads back as a plain LM with the adapters merged into its weights
    ckpt = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(ckpt)
    merged = load_finetuned_lm(ckpt)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    module.eval()
    ids = torch.tensor([lm.tokenizer("the film was great")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            final_hidden_states(merged.model, ids), module.hidden_states(ids, None), atol=1e-5, rtol=1e-4
        )


def test_lora_needs_frozen_blocks_and_valid_keys():
    lm = load_model("tiny:gpt2")
    with pytest.raises(ValueError, match="trainable_layers=0"):
        _module(lm, trainable_layers=2, lora={"r": 4})
    with pytest.raises(ValueError, match="unknown keys"):
        _module(load_model("tiny:gpt2"), trainable_layers=0, lora={"rank": 4})


def test_lora_on_top_blocks_trains_the_same_from_cached_features():
    uncached, _ = _train("gpt2", cached=False, lora={"r": 4, "layers": 1})
    cached, _ = _train("gpt2", cached=True, lora={"r": 4, "layers": 1})
    assert all(".h.2." in n for n in cached if ".lora_" in n)  # the top block only
    for name in uncached:
        torch.testing.assert_close(cached[name], uncached[name], atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# The v2 recipe files and train.py
# ---------------------------------------------------------------------------------------------------------------
V2_MAX_LENGTH = {"sst2": 64, "cola": 48, "mrpc": 96, "qnli": 128, "mnli": 96, "ag_news": 128, "squad": 192}


@pytest.mark.parametrize("task", sorted(V2_MAX_LENGTH))
def test_v2_experiment_files_compose_validate_and_cache_features(task):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from fnet.pipelines.config import validate_config

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=finetune_{task}_v2"])
    assert validate_config(cfg, "train") is cfg
    assert cfg.task.name == task and cfg.model.name == "smollm2_135m"
    assert cfg.datamodule.max_length == V2_MAX_LENGTH[task]
    assert cfg.module.cache_features and cfg.module.trainable_layers > 0 and cfg.module.lora is None
    if task == "mnli":  # trains on the mismatched file, tests on the whole matched file
        assert cfg.task.local.paths.train.endswith("mnli_mismatched.tsv") and cfg.task.local.holdout is None


@pytest.mark.slow
def test_train_cli_records_and_reuses_the_feature_cache(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    args = [
        "model=tiny_gpt2",
        "datamodule.max_train_rows=32",
        "datamodule.max_eval_rows=16",
        "datamodule.max_length=32",
        "datamodule.batch_size=8",
        "torch_threads=1",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
        "module.trainable_layers=1",
        "logger=none",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", FNET_CACHE=str(tmp_path / "cache"))
    results = {}
    for name, extra in (
        ("uncached", ["module.cache_features=false"]),
        ("first", ["module.cache_features=true"]),
        ("second", ["module.cache_features=true", "seed=1"]),
    ):
        run = tmp_path / name
        proc = subprocess.run(
            [sys.executable, str(repo / "train.py"), *args, *extra, f"hydra.run.dir={run}"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((run / "result.json").read_text())
    assert results["uncached"]["feature_cache"] == {"used": False}
    first, second = results["first"]["feature_cache"], results["second"]["feature_cache"]
    assert first["used"] and first["built"] == 3 and first["lower_blocks"]["split"] == 2
    assert second["used"] and second["reused"] == 3  # another seed: the same stored states
    assert results["first"]["test_result"]["score"] == pytest.approx(results["uncached"]["test_result"]["score"])
    assert results["first"]["cpu_seconds"]["total"] > 0
