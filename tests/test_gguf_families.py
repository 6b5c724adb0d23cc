"""Any GGUF transformers reads goes through fnet's one-time conversion, not only the SmolLM2 (Llama) file.

The GGUFs are written here (tests/tiny_gguf.py says why no PyPI wheel could serve): a tiny GPT-2 (Conv1D weights
that llama.cpp stores transposed, fused qkv, biases) and a tiny Qwen2 (grouped-query attention with q/k/v biases).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_gguf import tiny_source_model, write_gguf

from fnet.models import load_model
from fnet.networks import NetworkSet

REPO = Path(__file__).resolve().parents[1]
TEXT = "Functional networks, 42 of them; ok?"


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    """family -> (source model, tokenizer, GGUF path)."""
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for family in ("gpt2", "qwen2"):
        model, tokenizer = tiny_source_model(family, seed=1)
        out[family] = (model, tokenizer, write_gguf(model, tokenizer, folder / f"tiny-{family}.gguf", family))
    return out


@pytest.mark.parametrize(
    "family, model_class, down_proj",
    [("gpt2", "GPT2LMHeadModel", "c_proj"), ("qwen2", "Qwen2ForCausalLM", "down_proj")],
)
def test_gguf_conversion_reproduces_the_source_model(gguf_files, fnet_cache, family, model_class, down_proj):
    source, tokenizer, path = gguf_files[family]
    lm = load_model(str(path))
    assert type(lm.model).__name__ == model_class and lm.arch.family == family
    assert lm.arch.down_proj == down_proj and lm.arch.n_layers == 3
    ids = tokenizer(TEXT, return_tensors="pt").input_ids  # [1, seq]
    assert torch.equal(lm.tokenizer(TEXT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, source(ids).logits)  # fp32 GGUF: bit-exact
    converted = [p for p in (fnet_cache / "models").glob(f"tiny-{family}-*") if p.is_dir()]
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    source_info = json.loads((converted[0] / "fnet_source.json").read_text())
    assert source_info["gguf"] == str(path.resolve())
    # loaded again: the cached folder is reused, not converted a second time
    mtime = (converted[0] / "model.safetensors").stat().st_mtime_ns
    assert load_model(str(path)).fingerprint == lm.fingerprint
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_gguf_content_is_converted_again(gguf_files, fnet_cache, tmp_path):
    """The conversion folder is keyed by the GGUF's content: same path, other weights -> another folder."""
    source, tokenizer, _ = gguf_files["gpt2"]
    path = write_gguf(source, tokenizer, tmp_path / "m.gguf", "gpt2")
    first = load_model(str(path))
    changed, _ = tiny_source_model("gpt2", seed=2)
    write_gguf(changed, tokenizer, path, "gpt2")
    second = load_model(str(path))
    assert len([p for p in (fnet_cache / "models").glob("m-*") if p.is_dir()]) == 2
    assert first.fingerprint != second.fingerprint
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(second.model(ids).logits, changed(ids).logits)


def _env(cache):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FNET_CACHE=str(cache),
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.slow  # two CLI subprocesses, ~40 s on two cores
def test_analyze_then_lesion_evaluate_on_a_gpt2_gguf(gguf_files, tmp_path, shared_data):
    """``analyze.py model.name=<file.gguf>`` then ``evaluate.py ... mask=lesion mask.networks_file=...``, offline."""
    _, _, path = gguf_files["gpt2"]
    cache, run_dir, eval_dir = tmp_path / "cache", tmp_path / "analyze", tmp_path / "evaluate"
    proc = subprocess.run(
        [
            sys.executable,
            "analyze.py",
            "model=tiny_gpt2",
            f"model.name={path}",
            "data.n_template=2",
            "data.n_individual=2",
            "ica.n_components=3",
            "record.max_length=64",
            "individual=false",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    networks_file = run_dir / "networks" / "all_group.safetensors"
    nets = NetworkSet.load(networks_file)
    assert nets.provenance["model"] == str(path) and nets.masks.shape == (3, 3, 32)  # K, layers, d_model
    assert (
        len([p for p in (cache / "models").glob("tiny-gpt2-*") if p.is_dir()]) == 1
    )  # converted once, in the run's cache

    proc = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "model=tiny_gpt2",
            f"model.name={path}",
            "task=sst2",
            "task.limit=8",
            "logger=none",
            "mask=lesion",
            "mask.networks=0",
            f"mask.networks_file={networks_file}",
            f"paths.data_dir={shared_data}",
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={eval_dir}",
            "eval.bootstrap=20",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((eval_dir / "result.json").read_text())
    assert result["provenance"]["model"] == str(path) and result["mask_mode"] == "lesion" and result["n"] == 8
    lesioned = nets.masks[0]  # [layers, d_model]
    assert result["mask"]["n_masked"] == int(lesioned.sum()) > 0
    assert result["mask"]["per_layer"] == lesioned.sum(dim=1).tolist()
    assert result["baseline"]["score"] is not None


def test_a_first_conversion_draws_nothing_from_the_global_rng(gguf_files, fnet_cache):
    """A seeded run that converts the GGUF (a cold cache) must continue with the same random stream as one that
    reads the converted folder: building the fresh model for the conversion initialises weights, and drew them
    from the global RNG, so a fine-tuned head differed between a machine's first run and every later one."""
    _, _, path = gguf_files["qwen2"]
    torch.manual_seed(0)
    load_model(str(path))  # converts
    cold = torch.rand(4)
    torch.manual_seed(0)
    load_model(str(path))  # reads the converted folder
    warm = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(cold, warm) and torch.equal(warm, torch.rand(4))
