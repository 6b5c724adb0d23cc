"""Results you can trust (#6): content-addressed caches, provenance checks, concurrent writers, corrupt entries."""

import json
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from fnet.cache import main as cache_main
from fnet.lit.checkpoints import load_finetuned_lm, read_checkpoint
from fnet.models import load_model
from fnet.networks import ForeignNetworksError, NetworkSet, check_compatible
from fnet.pipelines._common import networks_for_config
from fnet.pipelines.evaluate import baseline_cache_key
from fnet.recording import Text, record_dataset
from fnet.recording.store import ActivationStore, CorruptShardError

REPO = Path(__file__).resolve().parents[1]
TEXTS = [Text(id=f"t{i}", text=f"The number {i} is written here, " * (i + 2), source="test") for i in range(4)]


def analyze_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "analyze",
            overrides=[
                "model=tiny_gpt2",
                "data.n_template=2",
                "data.n_individual=0",
                "ica.n_components=3",
                "record.max_length=32",
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.root_dir={REPO}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "networks.source=news",
                *overrides,
            ],
        )


def fake_checkpoint(path, seed):
    """An fnet checkpoint of a 'fine-tuned' tiny GPT-2 whose weights are the random model of ``seed``."""
    state = load_model("tiny:gpt2", seed=seed).model.state_dict()
    torch.save(
        {
            "fnet": {"model_name": "tiny:gpt2", "backbone_prefix": "model."},
            "global_step": 1,
            "state_dict": {f"model.{k}": v for k, v in state.items()},
        },
        path,
    )
    return path


def _record(lm, cfg):
    """The cached recording of TEXTS with the config's record settings."""
    rec = cfg.record
    return record_dataset(
        lm,
        TEXTS,
        dataset="mine",
        cache_dir=cfg.paths.cache_dir,
        signal=rec.signal,
        max_length=rec.max_length,
        batch_size=rec.batch_size,
        progress=False,
    )


def test_fingerprint_is_content_not_name():
    a, b = load_model("tiny:gpt2"), load_model("tiny:gpt2")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 32
    assert load_model("tiny:gpt2", seed=1).fingerprint != a.fingerprint
    with torch.no_grad():
        b.model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert b.refresh_fingerprint() != a.fingerprint


def test_overwritten_checkpoint_recomputes_networks_and_baseline(tmp_path):
    cfg = analyze_cfg(tmp_path)
    ckpt = tmp_path / "last.ckpt"
    first = load_finetuned_lm(fake_checkpoint(ckpt, seed=0))
    nets_first = networks_for_config(cfg, first)
    second = load_finetuned_lm(fake_checkpoint(ckpt, seed=1))  # the resume workflow rewrites last.ckpt
    assert second.name == first.name and second.fingerprint != first.fingerprint
    nets_second = networks_for_config(cfg, second)
    cached = sorted((tmp_path / "cache" / "networks").glob("*.safetensors"))
    assert len(cached) == 2  # recomputed, not reused
    assert nets_first.provenance["model_fingerprint"] == first.fingerprint
    assert nets_second.provenance["model_fingerprint"] == second.fingerprint
    assert not torch.equal(nets_first.maps, nets_second.maps)
    assert len(list((tmp_path / "cache" / "activations").rglob("manifest.json"))) == 2
    task = {"name": "sst2"}
    eval_cfg = analyze_cfg(tmp_path, "+eval.max_length=null", f"paths.data_dir={tmp_path}")
    assert baseline_cache_key(eval_cfg, task, first.identity()) != baseline_cache_key(eval_cfg, task, second.identity())


def test_resaved_local_folder_and_dtype_change_rerecord(tmp_path):
    cfg = analyze_cfg(tmp_path)
    folder = tmp_path / "model"
    original = load_model("tiny:gpt2", seed=0)
    original.model.save_pretrained(folder)
    original.tokenizer.save_pretrained(folder)
    store_a = _record(load_model(str(folder)), cfg)
    load_model("tiny:gpt2", seed=1).model.save_pretrained(folder)  # same path, new weights
    store_b = _record(load_model(str(folder)), cfg)
    bf16 = load_model(str(folder), dtype="bfloat16")
    assert bf16.dtype == "bfloat16"
    store_c = _record(bf16, cfg)
    assert len({store_a.root, store_b.root, store_c.root}) == 3
    assert len({store_a.fingerprint, store_b.fingerprint, store_c.fingerprint}) == 3
    assert not np.allclose(store_a.load_array("t1"), store_b.load_array("t1"))
    assert not np.array_equal(store_b.load_array("t1"), store_c.load_array("t1"))
    # and the same model again reuses its store
    assert _record(load_model(str(folder)), cfg).root == store_b.root


def _netset_of(lm, signal="mlp_out"):
    masks = torch.zeros(3, lm.n_layers, lm.width(signal), dtype=torch.bool)
    masks[:, :, :4] = True
    return NetworkSet.from_masks(masks, {"model": lm.name, "model_fingerprint": lm.fingerprint, "signal": signal})


def test_foreign_networks_are_an_error_naming_both():
    gpt2, llama = load_model("tiny:gpt2"), load_model("tiny:llama")
    nets = _netset_of(gpt2)
    here = dict(model=llama.name, fingerprint=llama.fingerprint, n_layers=3, width=32, signal="mlp_out")
    with pytest.raises(
        ForeignNetworksError,
        match=r"found on tiny:gpt2 \(fingerprint "
        + gpt2.fingerprint[:12]
        + r".*3 layers x 32 mlp_out\) but the model is tiny:llama \(fingerprint "
        + llama.fingerprint[:12]
        + r".*allow_foreign",
    ):
        check_compatible(nets, **here)
    foreign = check_compatible(nets, **here, allow_foreign=True)
    assert foreign["networks"]["fingerprint"] == gpt2.fingerprint and foreign["model"]["model"] == "tiny:llama"
    assert check_compatible(nets, **dict(here, model=gpt2.name, fingerprint=gpt2.fingerprint)) is None
    with pytest.raises(ForeignNetworksError, match="signal"):
        check_compatible(nets, **dict(here, fingerprint=gpt2.fingerprint, signal="mlp_act"))
    # a shape mismatch cannot be overridden
    with pytest.raises(ForeignNetworksError, match="shape"):
        check_compatible(_netset_of(gpt2, "mlp_act"), **dict(here, width=48, signal="mlp_act"), allow_foreign=True)


def test_evaluate_refuses_foreign_networks_unless_allowed(tmp_path, shared_data):
    from fnet.pipelines.evaluate import run

    nets = _netset_of(load_model("tiny:gpt2")).save(tmp_path / "gpt2_nets.safetensors")

    def cfg(*extra):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(
                "evaluate",
                overrides=[
                    "model=tiny_llama",
                    "task=sst2",
                    "task.limit=4",
                    "logger=none",
                    "eval.bootstrap=20",
                    f"paths.root_dir={REPO}",
                    f"paths.output_dir={tmp_path / 'out'}",
                    f"paths.data_dir={shared_data}",
                    f"paths.cache_dir={tmp_path / 'cache'}",
                    "~callbacks.progress_bar",
                    "+trainer.enable_progress_bar=false",
                    "mask=lesion",
                    "mask.networks=0",
                    f"mask.networks_file={nets}",
                    *extra,
                ],
            )

    with pytest.raises(ForeignNetworksError, match="tiny:gpt2.*but the model is tiny:llama"):
        run(cfg())
    assert not (tmp_path / "out" / "result.json").exists()
    row = run(cfg("mask.allow_foreign=true"))
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    foreign = saved["provenance"]["foreign_networks"]
    assert foreign["networks"]["model"] == "tiny:gpt2" and foreign["model"]["model"] == "tiny:llama"
    assert saved["provenance"]["model"] == "tiny:llama" and row["mask"]["n_masked"] == 12


def _record_worker(root, n_texts):
    from fnet.models import load_model
    from fnet.recording.recorder import Recorder
    from fnet.recording.store import ActivationStore

    lm = load_model("tiny:gpt2")
    recorder = Recorder(lm, "mlp_out", max_length=32, batch_size=1, progress=False)
    store = ActivationStore.open(
        root,
        model=lm.name,
        fingerprint=lm.fingerprint,
        signal="mlp_out",
        n_layers=recorder.n_layers,
        width=recorder.width,
        max_length=recorder.max_length,
    )
    texts = [f"text {i} " * (i % 5 + 1) for i in range(n_texts)]
    recorder.record_to_store(texts, store, ids=[f"t{i:02d}" for i in range(n_texts)])


def test_two_processes_record_the_same_store(tmp_path):
    root, n = tmp_path / "store", 24
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_worker, args=(root, n)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    store = ActivationStore.load(root)
    assert sorted(store.ids) == [f"t{i:02d}" for i in range(n)]
    assert len({s.file for s in store.shards}) == n
    store.verify()
    assert not list(root.glob("*.tmp-*"))


def test_truncated_cached_networks_are_recomputed(tmp_path, caplog):
    cfg, lm = analyze_cfg(tmp_path), load_model("tiny:gpt2")
    first = networks_for_config(cfg, lm)
    (path,) = (tmp_path / "cache" / "networks").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # a save killed half-way (before saves were atomic)
    with caplog.at_level(logging.WARNING):
        again = networks_for_config(cfg, lm)
    assert torch.equal(again.masks, first.masks)
    assert NetworkSet.load(path).n_networks == 3
    assert len(list(path.parent.glob(path.name + ".corrupt-*"))) == 1
    assert str(path) in caplog.text and "corrupt" in caplog.text


def test_corrupt_user_networks_file_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "mine.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="mine.safetensors"):
        NetworkSet.load(bad)
    assert bad.exists()  # a user file is never moved


def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    good = fake_checkpoint(tmp_path / "good.ckpt", seed=0)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:2000])
    for path in (truncated, tmp_path / "garbage.ckpt"):
        if not path.exists():
            path.write_bytes(b"not a checkpoint at all")
        with pytest.raises(ValueError, match=rf"checkpoint {path} .*could not be read"):
            read_checkpoint(path)
        with pytest.raises(ValueError, match=path.name):
            load_finetuned_lm(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_nan_shard_is_named_and_rerecorded(tmp_path, caplog):
    cfg, lm = analyze_cfg(tmp_path), load_model("tiny:gpt2")
    store = _record(lm, cfg)
    expected = np.array(store.load_array("t2"))
    shard = store.root / store._entry("t2").file
    raw = bytearray(shard.read_bytes())
    raw[-64:] = np.full(32, np.nan, np.float16).tobytes()  # NaN bytes in the data, header intact
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match=rf"{shard.name} of text 't2'.*checksum"):
        ActivationStore.load(store.root).verify()
    with caplog.at_level(logging.WARNING):
        again = _record(lm, cfg)
    assert again.root == store.root
    assert shard.name in caplog.text and "'t2'" in caplog.text
    np.testing.assert_array_equal(again.load_array("t2"), expected)  # re-recorded
    again.verify()
    assert len(list(store.root.glob("*.corrupt-*"))) == 1


def test_store_refuses_non_finite_activations(tmp_path):
    store = ActivationStore.open(tmp_path, model="m", signal="mlp_out", n_layers=1, width=2, max_length=8)
    with pytest.raises(ValueError, match="text 'x' have 1 non-finite"):
        store.add("x", "x", np.array([[1.0, 1e6]]))  # beyond float16
    assert len(store) == 0


def test_cache_cli_lists_and_prunes(tmp_path, capsys):
    cfg, lm = analyze_cfg(tmp_path), load_model("tiny:gpt2")
    networks_for_config(cfg, lm)
    root = str(tmp_path / "cache")
    assert cache_main(["--root", root, "list"]) == 0
    listing = capsys.readouterr().out
    assert "networks" in listing and "activations" in listing and lm.fingerprint[:12] in listing
    assert cache_main(["--root", root, "prune", "--kind", "networks", "--dry-run"]) == 0
    assert len(list((tmp_path / "cache" / "networks").glob("*.safetensors"))) == 1
    assert cache_main(["--root", root, "prune", "--kind", "networks"]) == 0
    assert not list((tmp_path / "cache" / "networks").glob("*.safetensors"))
    assert list((tmp_path / "cache" / "activations").rglob("manifest.json"))  # other kinds kept
    assert cache_main(["--root", root, "prune", "--older-than", "0s"]) == 0
    assert not list((tmp_path / "cache" / "activations").rglob("manifest.json"))


def test_code_modules_resolve_and_cover_packages():
    """Every kind's code modules resolve; a package stands for all its modules; an unknown name is an error."""
    from fnet import cache
    from fnet.models.load import MODEL_CODE
    from fnet.networks import NETWORK_CODE
    from fnet.pipelines.evaluate import BASELINE_CODE
    from fnet.recording.cached import ACTIVATION_CODE

    for modules in (MODEL_CODE, ACTIVATION_CODE, NETWORK_CODE, BASELINE_CODE, ("fnet",)):
        assert cache.code_files(*modules)  # raises if any name no longer resolves
    models_files = {p.name for p in cache.code_files(*MODEL_CODE)}
    assert {"discovery.py", "load.py", "arch.py"} <= models_files  # the package fnet.models, not its __init__ only
    with pytest.raises(ValueError, match="fnet.no_such_module"):
        cache.code_files("fnet.models", "fnet.no_such_module")
    assert cache.code_version(*MODEL_CODE) != cache.code_version(*ACTIVATION_CODE)
