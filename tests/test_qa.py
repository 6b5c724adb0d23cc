"""Extractive QA: span decoding, offsets back to text, SQuAD EM/F1, windows, and a tiny training run."""

from __future__ import annotations

import pytest
import torch

from fnet.lit.datamodules import SquadDataModule, answer_char_span
from fnet.lit.qa import ExtractiveQAModule, best_spans, span_text, squad_metrics
from fnet.models import load_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_best_spans_respects_order_length_and_context():
    #                        0    1    2    3    4    5
    start = torch.tensor([[9.0, 1.0, 5.0, 0.0, 0.0, 0.0]])
    end = torch.tensor([[9.0, 4.0, 0.0, 1.0, 3.0, 8.0]])
    context = torch.tensor([[False, True, True, True, True, True]])  # position 0 is the question
    s, e, score = best_spans(start, end, context, max_answer_length=10)
    assert (s.item(), e.item(), score.item()) == (2, 5, 13.0)  # not (0, 0): the question cannot answer
    s, e, _ = best_spans(start, end, context, max_answer_length=3)  # 2..5 is 4 tokens long: too long
    assert (s.item(), e.item()) == (2, 4)
    # an end before the best start is never chosen
    s, e, score = best_spans(
        torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[0.0, 9.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool), 5
    )
    assert (s.item(), e.item(), score.item()) == (2, 2, 10.0)
    _, _, none = best_spans(start, end, torch.zeros_like(context), 5)
    assert none.item() == float("-inf")


def test_span_text_uses_character_offsets():
    context = "The Eiffel Tower is in Paris."
    offsets = torch.tensor([[-1, -1], [0, 3], [3, 10], [10, 16], [16, 19], [19, 22], [22, 28], [28, 29]])
    assert span_text(context, offsets, 2, 3) == "Eiffel Tower"
    assert span_text(context, offsets, 6, 7) == "Paris."
    assert span_text(context, offsets, 0, 1) == ""  # a question token has no context offset


def test_squad_em_f1_hand_checked():
    examples = [
        {"id": "a", "answers": ["Eiffel Tower"]},
        {"id": "b", "answers": ["Paris", "the city of Paris"]},
        {"id": "c", "answers": ["1889"]},
        {"id": "d", "answers": ["Gustave Eiffel"]},
    ]
    preds = {
        "a": "the Eiffel Tower!",  # articles and punctuation removed: exact
        "b": "in Paris France",  # F1 vs "paris": P=1/3, R=1 -> 0.5; vs "city of paris": P=1/3, R=1/3 -> 1/3
        "c": "1890",  # wrong
        "d": "Eiffel",  # P=1, R=1/2 -> 2/3
    }
    scores = squad_metrics(preds, examples)
    assert scores["exact_match"] == pytest.approx(0.25)
    assert scores["f1"] == pytest.approx((1 + 0.5 + 0 + 2 / 3) / 4, abs=1e-6)
    assert scores["per_example"][1] == (0.0, pytest.approx(0.5))
    from torchmetrics.functional.text import squad  # the same numbers as torchmetrics' SQuAD (in percent)

    reference = squad(
        [{"prediction_text": preds[e["id"]], "id": e["id"]} for e in examples],
        [{"answers": {"answer_start": [0] * len(e["answers"]), "text": e["answers"]}, "id": e["id"]} for e in examples],
    )
    assert float(reference["f1"]) / 100 == pytest.approx(scores["f1"], abs=1e-6)


def squad_rows(n: int = 12) -> list[dict]:
    cities = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
    rows = []
    for i in range(n):
        country, city = cities[i % 4]
        context = f"Story {i}. The capital of {country} is {city}, a large city. People like it."
        rows.append(
            {
                "id": f"q{i}",
                "context": context,
                "question": f"What is the capital of {country}?",
                "answers": [city, f"{city}, a large city"],
                "text_a": context,
                "text_b": "",
                "label": -1,
            }
        )
    return rows


def test_answer_char_span_first_occurrence():
    assert answer_char_span("a b a b", ["b"]) == (2, 3)
    assert answer_char_span("abc", ["zzz", "c"]) == (2, 3)
    assert answer_char_span("abc", ["zzz"]) is None


def test_windows_map_answers_back_to_text():
    tok = load_model("tiny:gpt2").tokenizer
    dm = SquadDataModule(
        "squad", tokenizer=tok, rows=squad_rows(8), max_length=48, doc_stride=16, split=(0.5, 0.0, 0.5)
    )
    dm.setup()
    train = dm.datasets["train"]
    assert train and all(f["start_positions"] >= 0 for f in train)  # training keeps windows with the answer
    for feature in train:
        example = dm.examples["train"][feature["example_index"]]
        assert (
            span_text(example["context"], feature["offsets"], feature["start_positions"], feature["end_positions"])
            == example["answers"][0]
        )
        ids = feature["input_ids"]
        assert tok.decode(ids).startswith(example["question"])  # question first: context tokens see it
    test = dm.datasets["test"]
    assert len(test) > len(dm.splits["test"])  # long contexts -> several windows per example
    contexts = {r["context"] for r in dm.splits["train"]}
    assert not any(r["context"] in contexts for r in dm.splits["test"])  # paragraphs do not straddle splits
    batch = next(iter(dm.test_dataloader()))
    assert batch["offsets"].shape[:2] == batch["input_ids"].shape and len(batch["examples"]) == len(batch["input_ids"])


def test_too_short_max_length_is_a_clear_error_at_the_exact_limit():
    """A window must hold the longest question, the special tokens and more than doc_stride context tokens; one
    token less is our error naming the setting and the value that works (the tokenizer itself panics or raises
    "Sequence to truncate too short")."""
    tok = load_model("tiny:gpt2").tokenizer
    rows = squad_rows(8)
    longest = max(len(tok(r["question"].strip() + "\n", add_special_tokens=False)["input_ids"]) for r in rows)
    need = longest + tok.num_special_tokens_to_add(pair=True) + 2 + 1
    make = lambda max_length: SquadDataModule(
        "squad", tokenizer=tok, rows=rows, max_length=max_length, doc_stride=2, split=(0.5, 0.0, 0.5)
    )
    with pytest.raises(
        ValueError,
        match=rf"datamodule.max_length={need - 1} is too short .* "
        rf"question is {longest} tokens.*max_length >= {need}",
    ):
        make(need - 1).setup()
    dm = make(need)
    dm.setup()
    assert all(len(f["input_ids"]) <= need for f in dm.datasets["test"])


def test_qa_module_learns_toy_spans_and_reports_em_f1():
    from functools import partial

    import lightning.pytorch as pl

    pl.seed_everything(0)
    module = ExtractiveQAModule("tiny:gpt2", max_answer_length=8, optimizer=partial(torch.optim.AdamW, lr=3e-3))
    dm = SquadDataModule(
        "squad",
        tokenizer=module.tokenizer,
        rows=squad_rows(24),
        max_length=96,
        doc_stride=32,
        batch_size=8,
        split=(0.7, 0.0, 0.3),
    )
    losses = []

    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=12,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Rec()],
    )
    trainer.fit(module, datamodule=dm)
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert {"test/exact_match", "test/f1"} <= set(result)
    assert 0 <= result["test/exact_match"] <= result["test/f1"] <= 1
    assert set(module.predictions["test"]) == {r["id"] for r in dm.splits["test"]}
    row = module.results
    assert row["metric"] == "f1" and row["n"] == len(dm.splits["test"])
    assert row["score"] == pytest.approx(result["test/f1"]) and len(module.outputs) == row["n"]
