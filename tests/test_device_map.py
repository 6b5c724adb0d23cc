"""Models larger than one device: ``load_model(..., device_map=...)`` with blocks offloaded to disk, so that
accelerate's own hooks (load the weights before a module's forward, back to "meta" after) sit in the path of
fnet's hooks. Recording and masking must equal the undispatched model; a stopped pass must leave no offloaded
weights in memory."""

import pytest
import torch

from fnet.hooks import trace_signal
from fnet.intervene import apply_mask
from fnet.models import load_model, tiny_model
from fnet.models.discovery import resolve_path
from fnet.recording import Recorder

FAMILIES = ["gpt2", "llama"]
SIGNALS = ["mlp_out", "mlp_act"]
TEXTS = ["The cat sat on the mat.", "Functional networks in language models", "1 2 3 4 5 6 7 8 9"]


def disk_map(model, blocks_path: str, on_disk=(1, 2)) -> dict[str, str]:
    """A device map that puts the blocks ``on_disk`` on "disk" and everything else on "cpu": the siblings of every
    module on the way to the block list are named, so the map covers the model exactly once."""
    device_map, prefix, module = {}, "", model
    for part in blocks_path.split("."):
        for name, _child in module.named_children():
            if name != part:
                device_map[prefix + name] = "cpu"
        prefix, module = prefix + part + ".", getattr(module, part)
    for index in range(len(module)):
        device_map[f"{prefix}{index}"] = "disk" if index in on_disk else "cpu"
    return device_map


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(plain LoadedModel, the same weights loaded with blocks 1 and 2 offloaded to disk)."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"saved-{family}")
    model, tokenizer = tiny_model(family, seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNET_CACHE", str(cache))
        plain = load_model(str(folder))
        device_map = disk_map(plain.model, plain.arch.blocks)
        dispatched = load_model(str(folder), device_map=device_map)
    assert set(dispatched.model.hf_device_map.values()) == {"cpu", "disk"}
    return plain, dispatched


def offloaded_loaded(model) -> list[str]:
    """Names of tensors that accelerate offloads but that are in memory now (should be none between passes)."""
    loaded = []
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for part in getattr(hook, "hooks", (hook,)) if hook is not None else ():
            if getattr(part, "offload", False):
                loaded += [
                    f"{name}.{n}"
                    for n, t in module.named_parameters(recurse=part.place_submodules)
                    if t.device.type != "meta"
                ]
    return loaded


@pytest.mark.parametrize("signal", SIGNALS)
def test_recording_equals_the_undispatched_model(pair, signal):
    plain, dispatched = pair
    assert offloaded_loaded(dispatched.model) == [] and any(
        p.device.type == "meta" for p in dispatched.model.parameters()
    )  # really offloaded
    want = Recorder(plain, signal, max_length=16, batch_size=2, progress=False).record(TEXTS)
    got = Recorder(dispatched, signal, max_length=16, batch_size=2, progress=False).record(TEXTS)
    for text_want, text_got in zip(want, got):  # [tokens, layers*width]
        assert text_got.shape == text_want.shape == (text_want.shape[0], plain.n_neurons(signal))
        torch.testing.assert_close(text_got, text_want, rtol=0, atol=1e-6)
    assert offloaded_loaded(dispatched.model) == []  # the recorder's early stop left nothing loaded


@pytest.mark.parametrize("signal", SIGNALS)
def test_lesion_of_planted_neurons_equals_the_undispatched_model(pair, signal):
    plain, dispatched = pair
    width = plain.width(signal)
    mask = torch.zeros(plain.n_layers, width, dtype=torch.bool)  # [layers, width]
    mask[0, [1, 5]] = True
    mask[1, [2]] = True  # a disk block
    mask[2, [0, width - 1]] = True
    ids = plain.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    seen = {}

    def read(layer, hidden):  # [batch, seq, width]
        seen[layer] = hidden.detach().clone()

    logits = {}
    for key, lm in (("plain", plain), ("dispatched", dispatched)):
        with apply_mask(lm.model, mask, signal=signal), torch.no_grad():
            with trace_signal(lm.model, signal, read=read):
                logits[key] = lm.model(**ids).logits
        for layer in range(lm.n_layers):
            assert torch.all(seen[layer][..., mask[layer]] == 0) and bool((seen[layer][..., ~mask[layer]] != 0).any())
    torch.testing.assert_close(logits["dispatched"], logits["plain"], rtol=0, atol=1e-6)
    with torch.no_grad():
        unmasked = plain.model(**ids).logits
    assert not torch.allclose(unmasked, logits["plain"])  # the lesion changed the output


@pytest.mark.parametrize("signal", SIGNALS)
def test_stop_in_a_preloaded_module_gives_its_weights_back(tmp_path, signal):
    """accelerate's ``preload_module_classes`` loads a whole MLP before its forward and offloads it after; fnet's
    stop inside that MLP skips the "after" (accelerate has no try/finally), so trace_signal offloads it again."""
    from accelerate import dispatch_model

    model, tokenizer = tiny_model("llama", seed=4)
    ids = tokenizer(TEXTS[:1], return_tensors="pt").input_ids
    want = {}
    with trace_signal(model, signal, read=lambda layer, h: want.__setitem__(layer, h.clone())), torch.no_grad():
        model(ids)
    device_map = disk_map(model, "model.layers", on_disk=(0, 1, 2))
    dispatch_model(
        model,
        device_map,
        main_device="cpu",
        offload_dir=str(tmp_path / "offload"),
        preload_module_classes=[type(model.model.layers[0].mlp).__name__],
    )
    mlp1 = resolve_path(model, "model.layers.1.mlp")
    assert getattr(mlp1._hf_hook, "place_submodules", False) and mlp1.down_proj.weight.device.type == "meta"
    got = {}
    with (
        trace_signal(model, signal, read=lambda layer, h: got.__setitem__(layer, h.clone()), layers=[0, 1], stop=True),
        torch.no_grad(),
    ):
        model(ids)
    assert sorted(got) == [0, 1]
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], want[layer], rtol=0, atol=1e-6)
    assert offloaded_loaded(model) == []  # without the fix: model.layers.1.mlp.{gate,up,down}_proj.weight
    with torch.no_grad():  # and the model still runs (the weights come back from disk)
        model(ids)
    assert offloaded_loaded(model) == []
