import pytest
import torch

from fnet.models import (
    down_proj_modules,
    find_blocks,
    get_arch,
    load_model,
    mlp_modules,
    model_dims,
    tiny_config,
)

FAMILIES = ["gpt2", "llama", "chatglm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_dims_and_paths(family):
    lm = load_model(f"tiny:{family}")
    assert lm.arch.family == family
    dims = lm.dims
    assert len(find_blocks(lm.model)) == dims["n_layers"] == 3
    assert dims["d_model"] == 32
    # d_mlp must equal the down projection's input width, whatever the weight layout (GPT-2 Conv1D: [in, out])
    down = down_proj_modules(lm.model)[0]
    x = torch.zeros(1, dims["d_mlp"])
    assert down(x).shape[-1] == dims["d_model"]
    assert len(mlp_modules(lm.model)) == 3
    assert lm.width("mlp_out") == 32 and lm.width("mlp_act") == dims["d_mlp"]
    assert lm.n_neurons("mlp_out") == 96


def test_gpt2_implicit_d_mlp_is_four_times_d_model():
    assert model_dims(tiny_config("gpt2"))["d_mlp"] == 4 * 32


def test_layout_is_measured_not_listed():
    """Sequence-first is found by the dry run (ChatGLM's [seq, batch, ..]), not by a list of model types."""
    assert [f for f in FAMILIES if load_model(f"tiny:{f}").arch.seq_first] == ["chatglm"]


def test_config_alone_is_a_clear_error():
    from transformers import BertConfig

    with pytest.raises(ValueError, match="cannot find the MLP of model_type='bert' from its config alone"):
        get_arch(BertConfig())


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="(?s)could not load model .*Offline choices"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="unknown tiny family 'bert'"):
        load_model("tiny:bert")
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))


def test_unknown_signal():
    lm = load_model("tiny:gpt2")
    with pytest.raises(ValueError, match="unknown signal 'resid'.*mlp_out.*mlp_act"):
        lm.width("resid")


def test_tiny_models_are_deterministic_per_seed():
    a, b, c = (load_model("tiny:llama", seed=s).model for s in (0, 0, 1))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.slow
def test_default_model_loads_from_cache_fast(smollm2):
    import time

    assert smollm2.arch.family == "llama"
    assert smollm2.n_layers == 30 and smollm2.d_model == 576 and smollm2.d_mlp == 1536
    started = time.time()
    again = load_model("smollm2_135m")  # the cached safetensors folder exists now
    assert time.time() - started < 5  # the target is < 2 s; loose bound here against a loaded CI machine
    x = smollm2.tokenizer(["The cat sat on the mat."], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(smollm2.model(**x).logits, again.model(**x).logits)
