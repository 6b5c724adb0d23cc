"""ZeroShotModule / ZeroShotDataModule on a tiny model: few-shot shots, subsampling, metrics vs direct scoring,
masks."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fnet import scoring
from fnet.lit.zeroshot import ZeroShotModule
from fnet.lit.zeroshot_data import UnpaddedDistributedSampler, ZeroShotDataModule, subsample
from fnet.models import load_model
from fnet.scoring.tasks import get_task, load_task_config


def task_cfg(name, **over):
    return get_task(OmegaConf.merge(load_task_config(name), over))


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:gpt2")


def trainer():
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def test_fewshot_shots_are_disjoint_from_scored_rows_and_seeded(shared_data, tiny):
    task = task_cfg("sst2", num_fewshot=4, limit=30)
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, max_length=100000)
    dm.setup()
    scored = {r["text_a"] for r in dm.rows}
    shots = {r["index"]: dm.builder.shots_for(r) for r in dm.rows}
    for row in dm.rows:
        assert len(shots[row["index"]]) == 4
        assert not {s["text_a"] for s in shots[row["index"]]} & scored
        assert sorted(s["label"] for s in shots[row["index"]]) == [0, 0, 1, 1]  # balanced
    # seeded: a fresh datamodule draws the same shots; another seed draws others
    again = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, max_length=100000)
    again.setup()
    assert [[s["text_a"] for s in again.builder.shots_for(r)] for r in again.rows] == [
        [s["text_a"] for s in shots[r["index"]]] for r in dm.rows
    ]
    other = ZeroShotDataModule(
        task_cfg("sst2", num_fewshot=4, limit=30, fewshot={"seed": 7}),
        tiny.tokenizer,
        data_dir=shared_data,
        max_length=100000,
    )
    other.setup()
    assert any(
        [s["text_a"] for s in other.builder.shots_for(r)] != [s["text_a"] for s in shots[r["index"]]]
        for r in other.rows
    )
    # the prompt: shots with their answers, then the row's question
    context = dm.builder.context(dm.rows[0])
    assert context.count("Sentiment:") == 5 and context.endswith("Review: " + dm.rows[0]["text_a"] + "\nSentiment:")
    assert "Sentiment: positive" in context and "Sentiment: negative" in context


def test_fixed_shots_are_shared(shared_data, tiny):
    task = task_cfg("mnli", num_fewshot=3, limit=5, fewshot={"sampling": "fixed", "seed": 1})
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data)
    dm.setup()
    first = [s["index"] for s in dm.builder.shots_for(dm.rows[0])]
    assert all([s["index"] for s in dm.builder.shots_for(r)] == first for r in dm.rows)
    assert sorted(s["label"] for s in dm.builder.shots_for(dm.rows[0])) == [0, 1, 2]


def test_fixed_shots_share_a_prefix_and_score_like_full_prompts(tiny):
    task = task_cfg(
        "sst2",
        num_fewshot=2,
        calibrate=True,
        fewshot={"sampling": "fixed", "seed": 3},
        prompt={"template": "{text_a} ->"},
    )
    pool = [{"index": i, "text_a": t, "label": i % 2} for i, t in enumerate(["bad", "good", "dull", "fun"])]
    rows = [{"index": 10 + i, "text_a": t, "label": i % 2} for i, t in enumerate(["meh", "great film", "ugh", "wow"])]
    builder = scoring.PromptBuilder(task, tiny.tokenizer, pool)
    requests = [builder.request(row, calibrate=True) for row in rows]
    n = requests[0].prefix_len
    assert n > 0 and all(r.prefix_len == n and r.context_tokens[:n] == requests[0].context_tokens[:n] for r in requests)
    assert requests[0].context == builder.context(rows[0])  # the same prompt text
    module = ZeroShotModule(tiny.model, tiny.tokenizer, task)
    records = module.score_batch(requests[:3]) + module.score_batch(requests[3:])
    assert len(module._kv_memo) == 1 and len(module._cf_memo) == 1  # one prefix, one content-free prompt
    for r, record in zip(requests, records):  # by hand, without the prefix cache, one row at a time
        raw = scoring.score_loglik(tiny.model, [r.context_tokens], [r.continuation_tokens], pad_token_id=256)[0]
        cf = scoring.score_loglik(
            tiny.model, [r.content_free_tokens], [r.content_free_continuation_tokens], pad_token_id=256
        )[0]
        assert record["scores"] == pytest.approx((raw - cf).tolist(), abs=1e-4)


def test_chat_template_multi_turn_shots(shared_data):
    lm = load_model("tiny:gpt2")
    lm.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    task = task_cfg("sst2", num_fewshot=2, limit=3, chat_template="auto")
    builder = scoring.PromptBuilder(
        task, lm.tokenizer, [{"index": 0, "text_a": "good", "label": 1}, {"index": 1, "text_a": "bad", "label": 0}]
    )
    text = builder.context({"index": 5, "text_a": "fine", "label": 1})
    assert (
        text.count("<user>") == 3
        and text.count("<assistant>positive</assistant>") + text.count("<assistant>negative</assistant>") == 2
        and text.endswith("<assistant>")
    )
    assert builder.continuations() == ["negative", "positive"]  # no leading space inside a chat turn


def test_subsample_is_seeded_and_in_order():
    rows = [{"i": i} for i in range(50)]
    a, b = subsample(rows, 10, seed=3), subsample(rows, 10, seed=3)
    assert a == b and len(a) == 10 and [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert subsample(rows, 10, seed=4) != a
    assert subsample(rows, None) == rows and subsample(rows, 100) == rows


def test_unpadded_sampler_partitions_without_duplicates():
    data = list(range(7))
    parts = [list(UnpaddedDistributedSampler(data, 2, r)) for r in range(2)]
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]
    assert sorted(parts[0] + parts[1]) == data
    assert [len(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)] == [3, 2, 2]


def test_module_metrics_match_direct_scoring(shared_data, tiny):
    task = task_cfg("mrpc", limit=10)
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, batch_size=3, max_length=128)
    module = ZeroShotModule(tiny.model, tiny.tokenizer, task, bootstrap=100)
    trainer().test(module, datamodule=dm, verbose=False)
    res = module.results
    requests = sorted(dm.dataset.items, key=lambda r: r.index)
    scores = scoring.score_loglik(
        tiny.model,
        [r.context_tokens for r in requests],
        [r.continuation_tokens for r in requests],
        pad_token_id=256,
        max_length=128,
    )
    preds, targets = scores.argmax(1), torch.tensor([r.label for r in requests])
    assert res["n"] == 10 and res["metric"] == "f1"
    assert res["metrics"]["accuracy"]["value"] == pytest.approx(float((preds == targets).float().mean()))
    assert res["metrics"]["f1"]["value"] == pytest.approx(scoring.class_metric("f1", preds, targets, 2))
    lo, hi = scoring.wilson_interval(float((preds == targets).sum()), 10)
    assert res["metrics"]["accuracy"]["ci_low"] == pytest.approx(lo)
    assert res["chance"]["majority"] == pytest.approx(
        max(targets.float().mean().item(), 1 - targets.float().mean().item())
    )
    assert res["chance"]["uniform"] == 0.5
    assert res["above_chance"] == (res["ci"][0] > res["metrics"]["f1"]["chance"])
    assert sorted(o["index"] for o in module.outputs) == [r.index for r in requests]


def test_calibration_subtracts_content_free_scores(shared_data, tiny):
    task = task_cfg("sst2", limit=4, calibrate=True)
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, max_length=128)
    dm.setup()
    module = ZeroShotModule(tiny.model, tiny.tokenizer, task)
    records = module.score_batch(dm.dataset.items)
    for request, record in zip(dm.dataset.items, records):
        raw = scoring.score_loglik(
            tiny.model, [request.context_tokens], [request.continuation_tokens], pad_token_id=256, max_length=128
        )[0]
        cf = scoring.score_loglik(
            tiny.model, [request.content_free_tokens], [request.continuation_tokens], pad_token_id=256, max_length=128
        )[0]
        assert record["scores"] == pytest.approx((raw - cf).tolist(), abs=1e-4)
        assert tiny.tokenizer.decode(request.content_free_tokens) == "Review: N/A\nSentiment:"


def test_generate_scoring_reports_parse_failures(shared_data, tiny):
    task = task_cfg("cola", limit=6, scoring="generate", generation={"max_new_tokens": 3, "until": ["\n"]})
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, batch_size=4, max_length=128)
    module = ZeroShotModule(tiny.model, tiny.tokenizer, task, bootstrap=50)
    trainer().test(module, datamodule=dm, verbose=False)
    res = module.results
    failures = sum(scoring.parse_choice(o["generated"], task.choices) is None for o in module.outputs)
    assert res["parse_failures"] == failures and res["parse_failure_rate"] == failures / 6
    assert len(res["pred_counts"]) == 3  # two labels + the parse-failure class


def test_mask_callback_masks_the_module_model(shared_data, tiny):
    from fnet.intervene import random_fraction_mask
    from fnet.lit.callbacks import MaskCallback

    task = task_cfg("sst2", limit=4)
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, max_length=128)
    plain = ZeroShotModule(tiny.model, tiny.tokenizer, task)
    trainer().test(plain, datamodule=dm, verbose=False)
    masked = ZeroShotModule(tiny.model, tiny.tokenizer, task)
    spec = random_fraction_mask(tiny.n_layers, tiny.d_model, fraction=1.0)
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[MaskCallback(spec)],
    ).test(masked, datamodule=dm, verbose=False)
    plain_scores = {o["index"]: o["scores"] for o in plain.outputs}
    masked_scores = {o["index"]: o["scores"] for o in masked.outputs}
    assert plain_scores.keys() == masked_scores.keys()
    assert any(not np.allclose(plain_scores[i], masked_scores[i]) for i in plain_scores)
    # the hooks are gone afterwards: scoring again gives the unmasked numbers
    again = ZeroShotModule(tiny.model, tiny.tokenizer, task)
    trainer().test(again, datamodule=dm, verbose=False)
    assert {o["index"]: o["scores"] for o in again.outputs} == plain_scores


def test_perplexity_module(shared_data, tiny):
    task = task_cfg("wikitext2", limit=3, perplexity={"max_length": 64, "stride": None})
    dm = ZeroShotDataModule(task, tiny.tokenizer, data_dir=shared_data, batch_size=2)
    module = ZeroShotModule(tiny.model, tiny.tokenizer, task, bootstrap=50)
    trainer().test(module, datamodule=dm, verbose=False)
    res = module.results
    nll = sum(o["nll"] for o in module.outputs)
    count = sum(o["n_scored"] for o in module.outputs)
    assert count == 3 * 63
    assert res["score"] == pytest.approx(np.exp(nll / count))
    assert res["above_chance"] is None
