"""Fine-tuning on tiny models: pooling, splits, freezing, learning, checkpoints, masking during evaluation."""

from __future__ import annotations

import logging

import pytest
import torch

from fnet.lit.classification import (
    SequenceClassificationModule,
    last_token_index,
    position_ids_from_mask,
    set_trainable,
)
from fnet.lit.datamodules import TaskDataModule
from fnet.models import find_blocks, load_model
from fnet.scoring.splits import fine_tuning_splits, split_rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread (two threads on an oversubscribed machine are ~20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_rows(n: int = 64) -> list[dict]:
    """A learnable binary task: positive rows mention 'great', negative ones 'awful'."""
    rows = []
    for i in range(n):
        word = "great" if i % 2 else "awful"
        filler = " ".join(["the film was"] * (1 + i % 3))
        rows.append({"text_a": f"{filler} {word} {i}", "text_b": None, "label": i % 2, "index": i})
    return rows


def _trainer(**kwargs):
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


# ---------------------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------------------
def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    assert position_ids_from_mask(left)[0].tolist() == [0, 0, 0, 1, 2]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_head_pools_last_real_token_not_padding(family, side):
    """Each sequence of a padded batch gets the logits it gets alone; pooling a pad position would not."""
    torch.manual_seed(0)
    module = SequenceClassificationModule(f"tiny:{family}", num_labels=3).eval()
    tok = module.tokenizer
    texts = ["a much longer sentence that sets the padded length", "short", "mid length text"]
    batch = tok.pad([{"input_ids": tok(t)["input_ids"]} for t in texts], return_tensors="pt", padding_side=side)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        padded = module(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([module(torch.tensor([tok(t)["input_ids"]])) for t in texts])
        # what pooling the last *position* would give: differs for the padded rows, so the check has teeth
        hidden = module.hidden_states(batch["input_ids"], batch["attention_mask"])
        naive = module.score(hidden[:, -1] if side == "right" else hidden[:, 0])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(naive[1:], alone[1:], atol=1e-3)


def test_sequence_first_family_pools_through_head_hook():
    module = SequenceClassificationModule("tiny:chatglm", num_labels=2).eval()
    ids = torch.tensor([module.tokenizer("hello there")["input_ids"]])
    with torch.no_grad():
        logits = module(ids)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------
def test_split_rows_disjoint_deterministic_and_grouped():
    rows = toy_rows(50) + [{"text_a": "dup", "text_b": None, "label": 0}] * 3
    first = split_rows(rows, (0.7, 0.1, 0.2), seed=3)
    again = split_rows(rows, (0.7, 0.1, 0.2), seed=3)
    other = split_rows(rows, (0.7, 0.1, 0.2), seed=4)
    assert first == again
    assert first != other
    texts = {name: {r["text_a"] for r in part} for name, part in first.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]
    assert sum(len(p) for p in first.values()) == len(rows)
    assert sum("dup" in t for t in texts.values()) == 1  # duplicates never straddle two parts
    assert len(first["test"]) >= 9
    with pytest.raises(ValueError, match="fractions"):
        split_rows(rows, (0.5, 0.1, 0.1))


def test_offline_qnli_split_is_disjoint_and_says_so(caplog):
    """QNLI has only its dev file offline: it is split with a seed, and the parts are disjoint."""
    parts, info = fine_tuning_splits("qnli", seed=0)
    again, _ = fine_tuning_splits("qnli", seed=0)
    assert [r["index"] for r in parts["test"]] == [r["index"] for r in again["test"]]
    idx = {name: {r["index"] for r in part} for name, part in parts.items()}
    assert (
        not idx["train"] & idx["test"] and not idx["train"] & idx["validation"] and not idx["validation"] & idx["test"]
    )
    assert sum(len(v) for v in idx.values()) == 5463
    texts_train = {(r["text_a"], r["text_b"]) for r in parts["train"]}
    assert not any((r["text_a"], r["text_b"]) in texts_train for r in parts["test"])
    assert info["source"] == "local" and "no training split exists" in info["rule"] and "seed 0" in info["rule"]
    assert abs(len(parts["test"]) / 5463 - 0.2) < 0.02

    load = load_model("tiny:gpt2")
    dm = TaskDataModule("qnli", tokenizer=load.tokenizer, max_train_rows=40, max_eval_rows=20, max_length=32)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "offline" in caplog.text and "split" in caplog.text
    assert dm.split_info["sizes"] == {"train": 40, "validation": 20, "test": 20}
    assert dm.split_info["test_labels"]["majority_rate"] >= 0.5
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 32 and batch["labels"].shape == (16,)


@pytest.mark.parametrize("task, n_train_file, n_dev", [("sst2", 67349, 872), ("cola", 8551, 1043), ("mrpc", 3668, 408)])
def test_glue_tasks_with_a_train_file_train_on_it_and_test_on_the_whole_dev_file(task, n_train_file, n_dev):
    """SST-2, CoLA and MRPC: train and validation come from the official train.tsv (seeded), the test split is
    the whole dev.tsv, as GLUE papers do, and the rule says so."""
    parts, info = fine_tuning_splits(task, seed=0)
    assert len(parts["test"]) == n_dev and len(parts["train"]) + len(parts["validation"]) == n_train_file
    assert "train.tsv" in info["path"] and "dev.tsv" in info["test_path"] and f"({n_dev} rows)" in info["rule"]
    dev = {(r["text_a"], r.get("text_b")) for r in parts["test"]}
    leaked = sum((r["text_a"], r.get("text_b")) in dev for r in parts["train"])
    assert leaked <= 18  # CoLA's release repeats 18 dev sentences in train; SST-2 and MRPC share none


def test_pair_task_and_prompt_inputs():
    load = load_model("tiny:gpt2")
    rows = [{"text_a": f"premise {i}", "text_b": f"hypothesis {i}", "label": i % 3} for i in range(30)]
    dm = TaskDataModule("mnli", tokenizer=load.tokenizer, rows=rows, max_length=64)
    dm.setup()
    ids = dm.datasets["train"][0]["input_ids"]
    text = load.tokenizer.decode(ids)
    assert "premise" in text and "\nhypothesis" in text
    assert dm.num_labels == 3
    prompt = TaskDataModule("sst2", tokenizer=load.tokenizer, rows=toy_rows(20), input_format="prompt", max_length=40)
    prompt.setup()
    decoded = load.tokenizer.decode(prompt.datasets["train"][0]["input_ids"])
    suffix = prompt.task.prompt["template"].split("{text_a}")[-1]  # the question after the text, e.g. "\nSentiment:"
    assert suffix.strip() and decoded.endswith(suffix) and len(prompt.datasets["train"][0]["input_ids"]) <= 40


# ---------------------------------------------------------------------------------------------------------------
# Freezing and learning
# ---------------------------------------------------------------------------------------------------------------
def test_trainable_layers_policy():
    load = load_model("tiny:llama")
    model = load.model
    blocks = find_blocks(model)
    frozen = set_trainable(model, 0)
    assert frozen["backbone_trainable_params"] == 0
    top1 = set_trainable(model, 1)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert model.model.norm.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    everything = set_trainable(model, None)
    assert not model.lm_head.weight.requires_grad  # untied head: never used by the task heads
    assert (
        frozen["backbone_trainable_params"]
        < top1["backbone_trainable_params"]
        < everything["backbone_trainable_params"]
    )
    with pytest.raises(ValueError):
        set_trainable(model, 99)


class _LossRecorder:
    def __init__(self):
        import lightning as L

        outer = self
        self.losses: list[float] = []

        class Rec(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                outer.losses.append(float(outputs["loss"]))

        self.callback = Rec()


def test_loss_goes_down_on_learnable_toy_task():
    from functools import partial

    import lightning as L

    L.seed_everything(0)
    module = SequenceClassificationModule(
        "tiny:gpt2", num_labels=2, metrics=["accuracy", "f1"], optimizer=partial(torch.optim.AdamW, lr=3e-3)
    )
    dm = TaskDataModule(
        "sst2", tokenizer=module.tokenizer, rows=toy_rows(96), batch_size=16, max_length=48, split=(0.7, 0.0, 0.3)
    )
    rec = _LossRecorder()
    trainer = _trainer(max_epochs=6, callbacks=[rec.callback], limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    first, last = sum(rec.losses[:4]) / 4, sum(rec.losses[-4:]) / 4
    assert last < 0.5 * first, rec.losses
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert result["test/accuracy"] > 0.8 and "test/f1" in result
    row = module.results  # the row evaluate.py reports for a fine-tuned checkpoint
    assert row["metric"] == "accuracy" and row["score"] == pytest.approx(result["test/accuracy"])
    assert row["n"] == len(dm.splits["test"]) == len(module.outputs)
    assert row["ci"][0] - 1e-9 <= row["score"] <= row["ci"][1] + 1e-9 and row["above_chance"]
    assert sorted(r["index"] for r in module.outputs) == sorted(r["index"] for r in dm.splits["test"])


def test_mixed_precision_and_gradient_accumulation_from_trainer_config():
    module = SequenceClassificationModule("tiny:llama", num_labels=2)
    dm = TaskDataModule(
        "sst2", tokenizer=module.tokenizer, rows=toy_rows(40), batch_size=4, max_length=24, split=(0.8, 0.0, 0.2)
    )
    trainer = _trainer(max_epochs=1, precision="bf16-mixed", accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4  # 32 rows / 4 per batch = 8 batches, 2 per optimiser step
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert module.score.weight.dtype == torch.float32  # autocast, not a cast of the weights


def test_scheduler_partial_and_frozen_backbone_train_only_head():
    from functools import partial

    from fnet.lit.classification import warmup_scheduler

    module = SequenceClassificationModule(
        "tiny:gpt2",
        num_labels=2,
        trainable_layers=0,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        scheduler=partial(warmup_scheduler, name="cosine", warmup_ratio=0.5),
    )
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    head_before = module.score.weight.detach().clone()
    dm = TaskDataModule("sst2", tokenizer=module.tokenizer, rows=toy_rows(40), batch_size=8, max_length=32)
    trainer = _trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, module.score.weight)
    assert trainer.lr_scheduler_configs[0].interval == "step"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints -> analysis and evaluation
# ---------------------------------------------------------------------------------------------------------------
def _fit_and_checkpoint(tmp_path, checkpoint_frozen=True, trainable_layers=None):
    from functools import partial

    from lightning.pytorch.callbacks import ModelCheckpoint

    module = SequenceClassificationModule(
        "tiny:gpt2",
        num_labels=2,
        task_name="sst2",
        trainable_layers=trainable_layers,
        checkpoint_frozen=checkpoint_frozen,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )
    dm = TaskDataModule(
        "sst2", tokenizer=module.tokenizer, max_train_rows=24, max_eval_rows=12, max_length=24, batch_size=8
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = _trainer(max_steps=3, callbacks=[ckpt], enable_checkpointing=True, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    return module, dm, tmp_path / "last.ckpt"


def test_load_finetuned_lm_and_evaluation_module(tmp_path):
    from omegaconf import OmegaConf

    from fnet.lit.checkpoints import load_finetuned_lm
    from fnet.pipelines.checkpoint_eval import evaluation_module

    module, dm, path = _fit_and_checkpoint(tmp_path)
    base = load_model("tiny:gpt2")
    lm = load_finetuned_lm(path)
    assert lm.arch.family == "gpt2" and str(path.resolve()) in lm.name and "step3" in lm.name
    assert lm.extra["task"] == "sst2" and lm.extra["global_step"] == 3
    tuned = module.model.state_dict()
    for key, value in lm.model.state_dict().items():
        torch.testing.assert_close(value, tuned[key])
    assert any(not torch.equal(v, base.model.state_dict()[k]) for k, v in lm.model.state_dict().items())

    cfg = OmegaConf.create(
        {
            "ckpt_path": str(path),
            "task": {"name": "sst2"},
            "paths": {"data_dir": None},
            "finetune_eval": {"eval_batch_size": 4},
        }
    )
    eval_module, eval_dm = evaluation_module(cfg)
    eval_dm.setup("test")
    assert [r["index"] for r in eval_dm.splits["test"]] == [r["index"] for r in dm.splits["test"]]
    assert eval_dm.hparams.eval_batch_size == 4
    torch.testing.assert_close(eval_module.score.weight, module.score.weight)
    results = _trainer().test(eval_module, datamodule=eval_dm, verbose=False)[0]
    assert 0.0 <= results["test/accuracy"] <= 1.0
    with pytest.raises(ValueError, match="fine-tuned on 'sst2'"):
        evaluation_module(OmegaConf.create({"ckpt_path": str(path), "task": {"name": "cola"}}))


def test_checkpoint_without_frozen_weights(tmp_path):
    from fnet.lit.checkpoints import load_finetuned_lm

    module, _, path = _fit_and_checkpoint(tmp_path, checkpoint_frozen=False, trainable_layers=1)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("model.transformer.h.0.") for k in state)
    assert any(k.startswith("model.transformer.h.2.") for k in state)
    lm = load_finetuned_lm(path)
    for key, value in lm.model.state_dict().items():
        torch.testing.assert_close(value, module.model.state_dict()[key])
    from omegaconf import OmegaConf

    from fnet.pipelines.checkpoint_eval import evaluation_module

    cfg = OmegaConf.create({"ckpt_path": str(path), "task": {"name": "sst2", "limit": 5}, "eval": {"batch_size": 2}})
    eval_module, eval_dm = evaluation_module(cfg)
    assert eval_dm.hparams.max_eval_rows == 5 and eval_dm.hparams.eval_batch_size == 2
    for key, value in eval_module.state_dict().items():
        torch.testing.assert_close(value, module.state_dict()[key])


# ---------------------------------------------------------------------------------------------------------------
# Masking during fine-tuned evaluation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,signal", [("gpt2", "mlp_out"), ("llama", "mlp_act")])
def test_mask_callback_zeroes_exactly_the_masked_neurons_during_test(family, signal):
    pytest.importorskip("fnet.lit.callbacks")
    import lightning as L

    from fnet.intervene import MaskSpec, expected_mask_shape
    from fnet.lit.callbacks import MaskCallback
    from fnet.models import signal_modules

    module = SequenceClassificationModule(f"tiny:{family}", num_labels=2)
    n_layers, width = expected_mask_shape(module.model, signal)
    mask = torch.rand(n_layers, width, generator=torch.Generator().manual_seed(0)) < 0.3
    mask[0, 0] = True
    seen: dict[str, list] = {"before": [], "after": []}

    class Observe(L.Callback):
        """Reads each layer's signal just before (prepended hook) and after the mask's hook."""

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.handles = []
            for layer, mod in enumerate(signal_modules(pl_module.model, signal)):
                if signal == "mlp_out":
                    first = lambda m, i, o, layer=layer: seen["before"].append((layer, o.detach().clone()))
                    last = lambda m, i, o, layer=layer: seen["after"].append((layer, o.detach().clone()))
                    self.handles.append(mod.register_forward_hook(first, prepend=True))
                    self.handles.append(mod.register_forward_hook(last))
                else:
                    first = lambda m, a, layer=layer: seen["before"].append((layer, a[0].detach().clone()))
                    last = lambda m, a, layer=layer: seen["after"].append((layer, a[0].detach().clone()))
                    self.handles.append(mod.register_forward_pre_hook(first, prepend=True))
                    self.handles.append(mod.register_forward_pre_hook(last))

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            for handle in self.handles:
                handle.remove()

    dm = TaskDataModule(
        "sst2", tokenizer=module.tokenizer, rows=toy_rows(30), max_length=24, batch_size=4, split=(0.6, 0.1, 0.3)
    )
    spec = MaskSpec(mask=mask, signal=signal)
    _trainer(callbacks=[MaskCallback(spec), Observe()], limit_test_batches=1).test(module, datamodule=dm, verbose=False)
    assert len(seen["before"]) == len(seen["after"]) == n_layers
    for (layer, before), (layer_after, after) in zip(seen["before"], seen["after"]):
        assert layer == layer_after
        assert (after[..., mask[layer]] == 0).all()
        assert (before[..., mask[layer]] != 0).any()  # the mask removed something real
        torch.testing.assert_close(after[..., ~mask[layer]], before[..., ~mask[layer]])
    # and the hooks are gone afterwards
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in signal_modules(module.model, signal))


def test_fine_tuned_mcc_is_zero_for_a_constant_predictor_and_matches_sklearn():
    # torchmetrics' MatthewsCorrCoef reports 0.077 for an all-'acceptable' CoLA predictor; GLUE/sklearn say 0
    from sklearn.metrics import matthews_corrcoef

    from fnet.lit.classification import classification_metrics

    constant = classification_metrics(["mcc"], 2)
    targets = torch.tensor([1] * 68 + [0] * 32)
    constant.update(torch.ones(100, dtype=torch.long), targets)
    assert float(constant.compute()["mcc"]) == 0.0
    three = classification_metrics(["mcc"], 3)
    preds, truth = torch.tensor([0, 1, 2, 2, 1, 0, 1]), torch.tensor([0, 2, 2, 1, 1, 0, 0])
    three.update(preds, truth)
    assert abs(float(three.compute()["mcc"]) - matthews_corrcoef(truth, preds)) < 1e-9
