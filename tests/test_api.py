"""The public API (``import fnet``): names, help, the notebook path on a tiny model, and the README example."""

import pydoc
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fnet
from fnet.networks import ForeignNetworksError, NetworkSet

REPO = Path(__file__).resolve().parents[1]
API = [
    "load_model",
    "record",
    "ActivationStore",
    "FastICA",
    "CanICA",
    "find_networks",
    "NetworkSet",
    "match_templates",
    "apply_mask",
    "lesion",
    "preserve",
    "random_control",
    "load_task",
    "evaluate",
    "attribute",
]


def test_help_lists_the_api():
    text = pydoc.render_doc(fnet, renderer=pydoc.plaintext)
    for name in API:
        assert name in fnet.__all__
        assert re.search(rf"\b{name}\b", text), name
        assert getattr(fnet, name).__doc__, f"{name} has no docstring"


def test_unknown_name_lists_the_api():
    with pytest.raises(AttributeError, match="public names"):
        fnet.find_network  # noqa: B018 - a typo


def planted_networks(lm, k=2, per_layer=3):
    """Networks of ``lm`` with planted neurons (network i: units i*per_layer .. in every layer), stamped with
    its identity as find_networks would."""
    masks = torch.zeros(k, lm.n_layers, lm.d_model, dtype=torch.bool)
    for i in range(k):
        masks[i, :, i * per_layer : (i + 1) * per_layer] = True
    return NetworkSet.from_masks(
        masks, provenance={"model": lm.name, "model_fingerprint": lm.fingerprint, "signal": "mlp_out"}
    )


def test_record_find_lesion_on_a_tiny_model(tmp_path):
    lm = fnet.load_model("tiny:gpt2")
    texts = ["the cat sat on the mat " * 6, "a dog ran in the park " * 6, "one two three four five " * 6]
    store = fnet.record(lm, texts, max_length=48, cache_dir=tmp_path)
    assert len(store) == 3 and store.arrays()[0].shape[1] == lm.n_layers * lm.d_model
    again = fnet.record(lm, texts, max_length=48, cache_dir=tmp_path)  # content-addressed: the same store
    assert again.root == store.root
    nets = fnet.find_networks(store, n_components=3)
    assert nets.masks.shape == (3, lm.n_layers, lm.d_model)
    assert nets.provenance["model_fingerprint"] == lm.fingerprint

    planted = planted_networks(lm)
    with fnet.lesion(lm, planted, 1) as spec:  # network 1 = units 3..5 of every layer
        lesioned = fnet.record(lm, texts[:1], max_length=48, cache_dir=tmp_path / "lesioned").arrays()[0]
    assert spec.n_masked == 3 * lm.n_layers
    clean = np.asarray(store.arrays()[0], dtype=np.float32).reshape(-1, lm.n_layers, lm.d_model)
    lesioned = np.asarray(lesioned, dtype=np.float32).reshape(-1, lm.n_layers, lm.d_model)
    assert np.all(lesioned[:, :, 3:6] == 0) and np.any(clean[:, :, 3:6] != 0)
    # layer 0 before the lesion takes effect downstream: its other units are untouched
    assert np.allclose(lesioned[:, 0, 6:], clean[:, 0, 6:], atol=1e-3)
    with fnet.preserve(lm, planted, [0]) as kept:
        assert kept.n_masked == lm.n_layers * (lm.d_model - 3)


def test_foreign_networks_are_refused():
    gpt2, llama = fnet.load_model("tiny:gpt2"), fnet.load_model("tiny:llama")
    with pytest.raises(ForeignNetworksError, match="tiny:gpt2"):
        with fnet.lesion(llama, planted_networks(gpt2), 0):
            pass


def test_random_controls_match_counts_and_magnitude():
    lm = fnet.load_model("tiny:gpt2")
    nets = planted_networks(lm)
    count = fnet.random_control(nets, [0, 1], seed=3)
    assert count.mask.sum(dim=1).tolist() == nets.union([0, 1]).sum(dim=1).tolist()
    scale = np.tile(np.arange(lm.d_model, dtype=float), (lm.n_layers, 1))  # unit u has scale u
    scale[:, :6] += 1000.0  # the networks' neurons are the 6 largest units of each layer
    # 2 bins of 16 units: the top bin holds the 6 reference units and 10 others (units 22..31)
    mag = fnet.random_control(nets, [0, 1], seed=3, match="magnitude", scale=scale, n_bins=2)
    drawn = mag.mask
    assert drawn.sum(dim=1).tolist() == [6] * lm.n_layers
    assert not (drawn & nets.union([0, 1])).any()  # never the reference neurons
    assert drawn[:, 22:].sum().item() == 6 * lm.n_layers and mag.meta["bin_fallbacks"] == 0
    # 4 bins of 8: only 2 free units (30, 31) share the reference's bin; 4 per layer come from the next bin
    tight = fnet.random_control(nets, [0, 1], seed=3, match="magnitude", scale=scale, n_bins=4).mask
    assert tight[:, 30:].all() and tight[:, 22:30].sum().item() == 4 * lm.n_layers
    with pytest.raises(ValueError, match="needs scale"):
        fnet.random_control(nets, 0, match="magnitude")
    with pytest.raises(ValueError, match="count"):
        fnet.random_control(nets, 0, match="size")


def test_evaluate_with_and_without_a_mask(shared_data):
    lm = fnet.load_model("tiny:gpt2")
    base = fnet.evaluate(lm, "sst2", limit=12, batch_size=6)
    assert base["task"] == "sst2" and base["n"] == 12 and base["metric"] == "accuracy"
    assert base["ci"][0] <= base["score"] <= base["ci"][1] and base["chance"] is not None
    everything = torch.ones(lm.n_layers, lm.d_model, dtype=torch.bool)
    masked = fnet.evaluate(lm, "sst2", mask=everything, limit=12, batch_size=6)
    assert masked["mask"]["n_masked"] == lm.n_layers * lm.d_model
    with pytest.raises(ValueError, match="unknown field"):
        fnet.load_task("sst2", num_fewshots=2)


@pytest.mark.slow
def test_readme_python_api_example_runs(shared_data, capsys):
    """The README's "Python API" example, verbatim, on the default model."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and all(0.0 <= float(x) <= 1.0 for x in printed)


def test_stage_subpackages_are_attributes_and_do_not_shadow_the_api():
    import subprocess
    import sys

    code = (
        "import fnet; assert fnet.recording.load_texts.__module__ == 'fnet.recording.sources'; "
        "assert callable(fnet.record) and callable(fnet.evaluate); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
