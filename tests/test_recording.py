"""Recorded values equal the MLP signals computed by hand from the weights, for every architecture and signal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fnet.models import get_arch, load_model, mlp_modules, to_batch_first
from fnet.recording.recorder import Recorder, record_texts
from fnet.recording.store import ActivationStore, CorruptShardError

FAMILIES = ["gpt2", "llama", "chatglm"]
TEXTS = ["The cat sat on the mat.", "Hi", "A somewhat longer sentence, to force padding in the batch!"]


def hand_mlp(family: str, mlp, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inner activations, output) of one MLP computed from its raw weights. x: [..., d_model]."""
    if family == "gpt2":  # Conv1D: y = x @ W + b with W [in, out]
        inner = x @ mlp.c_fc.weight + mlp.c_fc.bias
        act = 0.5 * inner * (1 + torch.tanh(np.sqrt(2 / np.pi) * (inner + 0.044715 * inner**3)))  # gelu_new
        return act, act @ mlp.c_proj.weight + mlp.c_proj.bias
    if family == "llama":
        act = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
        return act, act @ mlp.down_proj.weight.T
    gate, up = (x @ mlp.dense_h_to_4h.weight.T).chunk(2, dim=-1)
    act = F.silu(gate) * up
    return act, act @ mlp.dense_4h_to_h.weight.T


def mlp_inputs(lm, texts):
    """Each layer's MLP input per text, [tokens, d_model], by running texts one at a time (no padding)."""
    spec = get_arch(lm.model)
    per_text = []
    for text in texts:
        captured = {}
        handles = [
            m.register_forward_pre_hook(lambda mod, args, layer=layer: captured.__setitem__(layer, args[0]))
            for layer, m in enumerate(mlp_modules(lm.model))
        ]
        try:
            ids = lm.tokenizer([text], return_tensors="pt")
            with torch.no_grad():
                lm.model(**ids)
        finally:
            for h in handles:
                h.remove()
        per_text.append({l: to_batch_first(v, spec)[0] for l, v in captured.items()})
    return per_text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signal", ["mlp_out", "mlp_act"])
def test_recorded_values_equal_hand_computed_mlp(family, signal):
    lm = load_model(f"tiny:{family}")
    recorded = record_texts(lm, TEXTS, signal=signal, batch_size=3)  # one padded batch
    inputs = mlp_inputs(lm, TEXTS)
    width = lm.width(signal)
    mlps = mlp_modules(lm.model)
    for text, acts, layer_inputs in zip(TEXTS, recorded, inputs):
        n_tokens = len(lm.tokenizer(text)["input_ids"])
        assert acts.shape == (n_tokens, lm.n_layers * width)  # padding removed
        for layer in range(lm.n_layers):
            with torch.no_grad():
                inner, out = hand_mlp(family, mlps[layer], layer_inputs[layer])
            expected = out if signal == "mlp_out" else inner
            got = acts[:, layer * width : (layer + 1) * width]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_never_leaks(family):
    lm = load_model(f"tiny:{family}")
    alone = [record_texts(lm, [t])[0] for t in TEXTS]
    batched = record_texts(lm, TEXTS, batch_size=3)
    for a, b in zip(alone, batched):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_truncation_to_max_length():
    lm = load_model("tiny:gpt2")
    (acts,) = record_texts(lm, ["x" * 200], max_length=17)
    assert acts.shape[0] == 17


def test_max_length_is_capped_at_the_models_positions():
    lm = load_model("tiny:gpt2")  # 128 positions
    (acts,) = record_texts(lm, ["y" * 300], max_length=1024)
    assert acts.shape[0] == lm.max_positions == 128


def test_empty_text_is_an_error():
    lm = load_model("tiny:gpt2")
    with pytest.raises(ValueError, match="text 1 is empty"):
        record_texts(lm, ["fine", "   "])


def test_hooks_are_removed_after_recording():
    lm = load_model("tiny:llama")
    record_texts(lm, ["abc"])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


class CrashAfter(Exception):
    pass


def test_store_resume_after_crash_repeats_nothing(tmp_path, monkeypatch):
    lm = load_model("tiny:gpt2")
    texts = [f"text number {i} " * (i + 1) for i in range(7)]
    ids = [f"t{i}" for i in range(7)]
    recorder = Recorder(lm, "mlp_out", batch_size=2, progress=False)
    store = recorder.open_store(tmp_path / "store")
    written = []
    real_add = ActivationStore.add

    def crashing_add(self, text_id, text, acts):
        if len(written) == 4:
            raise CrashAfter("simulated kill")
        real_add(self, text_id, text, acts)
        written.append(text_id)

    monkeypatch.setattr(ActivationStore, "add", crashing_add)
    with pytest.raises(CrashAfter):
        recorder.record_to_store(texts, store, ids)
    monkeypatch.setattr(ActivationStore, "add", real_add)
    assert len(ActivationStore.load(tmp_path / "store")) == 4

    recorded_again = []
    real_batch = Recorder.record_batch

    def counting_batch(self, rows):
        recorded_again.extend(len(r) for r in rows)
        return real_batch(self, rows)

    monkeypatch.setattr(Recorder, "record_batch", counting_batch)
    store = recorder.open_store(tmp_path / "store")
    recorder.record_to_store(texts, store, ids)
    assert len(recorded_again) == 3  # only the three unfinished texts
    assert sorted(store.ids) == sorted(ids)
    # the resumed store equals a fresh recording
    fresh = record_texts(lm, texts)
    for text_id, expected in zip(ids, fresh):
        np.testing.assert_allclose(store.load_array(text_id), expected.numpy().astype(np.float16), rtol=1e-3, atol=1e-3)


def test_store_rejects_mixed_settings_and_changed_text(tmp_path):
    store = ActivationStore.open(tmp_path, model="m", signal="mlp_out", n_layers=2, width=3, max_length=8)
    store.add("a", "hello", np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match="different settings"):
        ActivationStore.open(tmp_path, model="m", signal="mlp_act", n_layers=2, width=3, max_length=8)
    with pytest.raises(ValueError, match="different content"):
        store.has("a", "goodbye")
    with pytest.raises(ValueError, match="expected \\[tokens, 6\\]"):
        store.add("b", "x", np.ones((4, 5)))


def test_corrupt_shard_is_a_clear_error(tmp_path):
    store = ActivationStore.open(tmp_path, model="m", signal="mlp_out", n_layers=2, width=3, max_length=8)
    store.add("a", "hello", np.arange(24, dtype=np.float32).reshape(4, 6))
    np.testing.assert_array_equal(store.load_array("a")[1], np.arange(6, 12))
    shard = tmp_path / store.shards[0].file
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated by a crash or a full disk
    with pytest.raises(CorruptShardError, match="shard-000000.npy of text 'a'.*re-record"):
        store.load_array("a")
    shard.unlink()
    with pytest.raises(CorruptShardError, match="missing"):
        store.verify()
    with pytest.raises(KeyError, match="not in activation store"):
        store.load_array("zzz")


def test_store_reads_are_memory_mapped(tmp_path):
    store = ActivationStore.open(tmp_path, model="m", signal="mlp_out", n_layers=1, width=4, max_length=8)
    store.add("a", "x", np.zeros((3, 4)))
    assert isinstance(store.load_array("a"), np.memmap)


def test_store_is_identified_by_fingerprint_not_name(tmp_path):
    """The same weights under another name (a checkpoint copied elsewhere) reopen the store; another
    fingerprint under the same name does not."""
    kw = dict(signal="mlp_out", n_layers=2, width=3, max_length=8)
    ActivationStore.open(tmp_path, model="/old/best.ckpt", fingerprint="abc", **kw).add("a", "hi", np.ones((4, 6)))
    reopened = ActivationStore.open(tmp_path, model="/new/best.ckpt", fingerprint="abc", **kw)
    assert reopened.ids == ["a"]
    with pytest.raises(ValueError, match="fingerprint"):
        ActivationStore.open(tmp_path, model="/old/best.ckpt", fingerprint="xyz", **kw)
    with pytest.raises(ValueError, match="model"):  # no fingerprint: the name is all there is
        ActivationStore.open(tmp_path / "b", model="m", **kw).add("a", "hi", np.ones((4, 6)))
        ActivationStore.open(tmp_path / "b", model="n", **kw)
