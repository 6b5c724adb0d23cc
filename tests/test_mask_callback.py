"""MaskCallback masks the LightningModule's LM during the chosen stages only, logs the mask's stats, and never
leaves hooks behind (also when a step raises)."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fnet.intervene import MaskSpec, build_mask
from fnet.lit.callbacks import MaskCallback, hooked_model
from fnet.models import load_model
from fnet.networks import NetworkSet
from fnet.recording.recorder import signal_hooks


class TinyLM(pl.LightningModule):
    """Runs the LM in every step and keeps the MLP output of layer 0 as the model used it."""

    def __init__(self, fail_in_validation: bool = False):
        super().__init__()
        lm = load_model("tiny:gpt2")
        self.model = lm.model
        self.arch = lm.arch
        self.fail_in_validation = fail_in_validation
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "validate": [], "test": [], "predict": []}

    def run(self, stage, ids):
        captured = {}
        # registered inside the step, i.e. after the callback's mask hooks: sees the masked signal
        with signal_hooks(
            self.model, "mlp_out", lambda l, t: captured.setdefault(l, t.detach().clone()), spec=self.arch
        ):
            out = self.model(input_ids=ids, labels=ids)
        self.seen[stage].append(captured[0])
        return out

    def training_step(self, batch, _):
        return self.run("train", batch[0]).loss

    def validation_step(self, batch, _):
        if self.fail_in_validation:
            raise RuntimeError("validation failed")
        self.log("val_loss", self.run("validate", batch[0]).loss)

    def test_step(self, batch, _):
        self.log("test_loss", self.run("test", batch[0]).loss)

    def predict_step(self, batch, _):
        return self.run("predict", batch[0]).logits

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: weights stay put, comparisons stay exact


def loader():
    ids = torch.randint(0, 256, (4, 6), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(ids), batch_size=2)


def trainer(callbacks, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def lesion_spec(module, units=(0, 3, 5), mode="zero", value=0.0):
    mask = torch.zeros(module.model.config.n_layer, module.model.config.n_embd, dtype=torch.bool)
    mask[:, list(units)] = True
    return MaskSpec(mask=mask, mode=mode, value=value, description="test lesion")


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_masked_during_validate_test_predict_and_not_after():
    module = TinyLM()
    spec = lesion_spec(module)
    callback = MaskCallback(spec)
    t = trainer([callback])
    results = t.validate(module, loader(), verbose=False)
    assert module.seen["validate"] and all(torch.all(x[..., spec.mask[0]] == 0) for x in module.seen["validate"])
    assert results[0]["mask/n_masked"] == spec.stats["n_masked"] == 9
    assert results[0]["mask/fraction"] == pytest.approx(9 / (3 * 32))
    assert callback.stats["per_layer"] == [3, 3, 3]
    assert no_hooks(module.model) and not callback.active

    t.test(module, loader(), verbose=False)
    assert all(torch.all(x[..., spec.mask[0]] == 0) for x in module.seen["test"])
    t.predict(module, loader())
    assert all(torch.all(x[..., spec.mask[0]] == 0) for x in module.seen["predict"])
    assert no_hooks(module.model)

    # afterwards the model is unmasked
    module.run("validate", next(iter(loader()))[0])
    assert torch.all(module.seen["validate"][-1][..., spec.mask[0]] != 0)


def test_stage_not_in_during_is_unmasked_and_none_spec_is_noop():
    module = TinyLM()
    spec = lesion_spec(module)
    trainer([MaskCallback(spec, during=["test"])]).validate(module, loader(), verbose=False)
    assert all(torch.all(x[..., spec.mask[0]] != 0) for x in module.seen["validate"])
    callback = MaskCallback(None)
    trainer([callback]).validate(module, loader(), verbose=False)
    assert callback.stats == {} and no_hooks(module.model)


def test_hooks_removed_when_a_step_raises():
    module = TinyLM(fail_in_validation=True)
    callback = MaskCallback(lesion_spec(module))
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer([callback]).validate(module, loader(), verbose=False)
    assert no_hooks(module.model) and not callback.active


def test_fit_masks_training_once_and_validation_inside_fit():
    """during_train: training and the validation inside fit are masked, and the mask is entered once (an
    amplification applied twice would add 2*value)."""
    module = TinyLM()
    value = 4.0
    spec = lesion_spec(module, mode="amplify", value=value)
    t = trainer(
        [MaskCallback(spec, during_train=True)],
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        val_check_interval=1,
    )
    t.fit(module, loader(), loader())
    assert module.seen["train"] and module.seen["validate"]
    ids = next(iter(loader()))[0]
    module.run("predict", ids)  # unmasked now
    raw = module.seen["predict"][-1]
    row = spec.mask[0]
    for x in module.seen["validate"][:1] + module.seen["train"][:1]:
        torch.testing.assert_close(x[..., row], raw[..., row] + value)
        assert torch.equal(x[..., ~row], raw[..., ~row])
    assert no_hooks(module.model)


def test_build_kwargs_and_callable_spec():
    module = TinyLM()
    ns = NetworkSet(
        torch.rand(3, 3, 32, generator=torch.Generator().manual_seed(0)) < 0.2, provenance={"signal": "mlp_out"}
    )
    module.netset = ns
    callback = MaskCallback(mode="lesion", networks="0,1")
    trainer([callback]).validate(module, loader(), verbose=False)
    assert torch.equal(callback.spec.mask, ns.masks[0] | ns.masks[1])
    assert all(torch.all(x[..., callback.spec.mask[0]] == 0) for x in module.seen["validate"])

    fraction = MaskCallback(mode="random_fraction", fraction=0.25, seed=1)  # n_layers/width from the model
    trainer([fraction]).validate(module, loader(), verbose=False)
    assert fraction.stats["per_layer"] == [8, 8, 8]

    built = MaskCallback(lambda m: build_mask("preserve", netset=m.netset))
    trainer([built]).validate(module, loader(), verbose=False)
    assert torch.equal(built.spec.mask, ~ns.union())
    with pytest.raises(ValueError, match="stages"):
        MaskCallback(during=["eval"])


def test_hooked_model_convention():
    module = TinyLM()
    assert hooked_model(module) is module.model
    module.lm_model = torch.nn.Linear(2, 2)
    assert hooked_model(module) is module.lm_model
    with pytest.raises(AttributeError, match="self.model"):
        hooked_model(pl.LightningModule())


def test_callback_config_composes():
    """conf/callbacks/mask.yaml instantiates to a partial MaskCallback that takes the spec from the entry point."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "callbacks" / "mask.yaml"
    partial = instantiate(OmegaConf.load(conf).mask)
    module = TinyLM()
    callback = partial(spec=lesion_spec(module))
    assert isinstance(callback, MaskCallback) and callback.during == {"validate", "test", "predict"}
