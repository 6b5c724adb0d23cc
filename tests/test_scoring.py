"""Scoring: log-likelihood against by-hand numbers, the label parser, perplexity windows, CIs, SQuAD EM/F1."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fnet import compat, scoring
from fnet.models import load_model
from fnet.scoring import parse_choice


class Bigram(torch.nn.Module):
    """A causal 'LM' whose next-token logits depend only on the current token: ``logits = table[token]``.
    Log-probs of any continuation are computable by hand from ``table``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])  # [batch, pos, vocab]


def bigram_table(vocab=6, seed=0):
    return torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))


def by_hand(table, context, continuation):
    log_probs = F.log_softmax(table, dim=-1)  # [prev, next]
    tokens = list(context) + list(continuation)
    return sum(float(log_probs[tokens[i - 1], tokens[i]]) for i in range(len(context), len(tokens)))


def test_loglik_picks_the_rigged_choice():
    table = torch.zeros(6, 6)
    table[3, 4] = 5.0  # after token 3, token 4 is very likely
    model = Bigram(table)
    scores = scoring.score_loglik(model, [[1, 2, 3], [0, 3]], [[[5], [4]], [[4], [5]]], pad_token_id=0)
    assert scores.argmax(1).tolist() == [1, 0]
    expected = math.log(math.exp(5) / (math.exp(5) + 5))  # log softmax of the rigged entry
    assert scores[0, 1].item() == pytest.approx(expected, abs=1e-6)
    assert scores[0, 0].item() == pytest.approx(math.log(1 / (math.exp(5) + 5)), abs=1e-6)


def test_loglik_matches_hand_computed_numbers_multi_token_and_padding():
    table = bigram_table()
    model = Bigram(table)
    contexts = [[1, 2, 3, 4, 5], [2], [0, 1]]  # different lengths -> right padding inside the batch
    continuations = [[[1, 2], [3]], [[4, 4, 4], [5]], [[2], [0, 0]]]
    scores = scoring.score_loglik(model, contexts, continuations, pad_token_id=0)  # [row, choice]
    for r, (ctx, conts) in enumerate(zip(contexts, continuations)):
        for c, cont in enumerate(conts):
            assert scores[r, c].item() == pytest.approx(by_hand(table, ctx, cont), abs=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_loglik_batched_equals_one_sequence_at_a_time(family):
    """A real (tiny) transformer: batched right-padded scoring = each sequence alone, unpadded, by hand."""
    lm = load_model(f"tiny:{family}")
    contexts = [list(range(10, 30)), [40, 41, 42], list(range(50, 57))]
    continuations = [[[1, 2], [3]], [[4], [5, 6, 7]], [[8], [9]]]
    scoring.PATH_COUNTS.clear()
    scores = scoring.score_loglik(lm.model, contexts, continuations, pad_token_id=256)
    assert scoring.PATH_COUNTS == {"shared_context": 1}  # the fast path ran, on this transformers release
    unshared = scoring.score_loglik(lm.model, contexts, continuations, pad_token_id=256, share_context=False)
    assert scoring.PATH_COUNTS == {"shared_context": 1, "full": 1}
    assert torch.allclose(scores, unshared, atol=1e-4)  # context computed once per row = once per choice
    single = scoring.score_loglik(
        lm.model, contexts, [[[c[0]] for c in conts] for conts in continuations], pad_token_id=256
    )  # the single-token path
    with torch.no_grad():
        for r, (ctx, conts) in enumerate(zip(contexts, continuations)):
            for c, cont in enumerate(conts):
                ids = torch.tensor([ctx + cont])
                log_probs = F.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)  # [pos, vocab]
                want = sum(float(log_probs[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
                assert scores[r, c].item() == pytest.approx(want, abs=1e-4)
                first = float(log_probs[len(ctx) - 1, cont[0]])
                assert single[r, c].item() == pytest.approx(first, abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prefix_cache_gives_the_same_scores(family):
    """Fixed shots: the prefix's keys/values computed once and reused = the full sequences, to float precision."""
    lm = load_model(f"tiny:{family}")
    prefix = list(range(60, 90))
    contexts = [prefix + [5, 6, 7], prefix + [8], prefix + list(range(100, 112))]
    for continuations in ([[[1], [2]]] * 3, [[[1, 2], [3]], [[4], [5, 6, 7]], [[8], [9]]]):
        full = scoring.score_loglik(lm.model, contexts, continuations, pad_token_id=256)
        memo = {}
        scoring.PATH_COUNTS.clear()
        cached = scoring.score_loglik(lm.model, contexts, continuations, pad_token_id=256, prefix_len=30, kv_memo=memo)
        assert scoring.PATH_COUNTS == {"prefix": 1}  # the shared keys/values were used, not full sequences
        assert len(memo) == 1
        assert torch.allclose(cached, full, atol=1e-4), (cached, full)
        again = scoring.score_loglik(
            lm.model, contexts[:1], continuations[:1], pad_token_id=256, prefix_len=30, kv_memo=memo
        )  # reuses the memo
        assert torch.allclose(again, full[:1], atol=1e-4)


def test_a_model_without_a_cache_argument_is_scored_in_full_and_says_so():
    """The fast paths need the forward's key/value cache argument; a model without one is scored correctly, the
    fallback is counted, and a warning says why (no silent switch-off)."""
    table = bigram_table()
    model = Bigram(table)  # forward(input_ids, attention_mask, ...) takes no cache
    assert compat.cache_argument(model) is None
    scoring.PATH_COUNTS.clear()
    scoring.loglik._warned_slow.clear()
    with pytest.warns(RuntimeWarning, match="shared-prefix scoring is not available for Bigram"):
        got = scoring.score_loglik(model, [[1, 2, 3], [1, 2, 4]], [[[4, 5], [0]]] * 2, pad_token_id=0, prefix_len=2)
    assert scoring.PATH_COUNTS["shared-prefix_unavailable"] == 1 and scoring.PATH_COUNTS["full"] == 1
    assert got[0, 0].item() == pytest.approx(by_hand(table, [1, 2, 3], [4, 5]), abs=1e-6)


def test_cache_argument_names_the_installed_transformers_keyword():
    """Whatever the installed transformers calls it, the name fnet passes is one the forward takes."""
    import inspect

    lm = load_model("tiny:llama")
    name = compat.cache_argument(lm.model)
    assert name in inspect.signature(lm.model.forward).parameters
    out = lm.model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
    from fnet.compat import output_cache

    assert output_cache(out).get_seq_length() == 3


def test_loglik_truncates_long_contexts_from_the_left():
    table = bigram_table()
    model = Bigram(table)
    long = [1, 2, 3, 4, 5, 1, 2, 3]
    cut = scoring.score_loglik(model, [long], [[[4, 5], [0]]], pad_token_id=0, max_length=4)
    # a bigram only sees the last context token, so truncation must not change the scores
    assert cut[0, 0].item() == pytest.approx(by_hand(table, long, [4, 5]), abs=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------
COLA = ["unacceptable", "acceptable"]


@pytest.mark.parametrize(
    "text, want",
    [
        ("unacceptable", 0),
        ("acceptable", 1),
        ("Unacceptable.", 0),
        ("  ACCEPTABLE!", 1),
        ("The sentence is unacceptable", 0),
        ("It is acceptable, not unacceptable", 1),  # the earliest label wins
        ("unacceptable, not acceptable", 0),
        ("acceptable-ish", 1),
        ("inacceptable", None),  # no whole-word label
        ("", None),
        ("I don't know", None),
    ],
)
def test_parser_cola_never_reads_acceptable_inside_unacceptable(text, want):
    assert parse_choice(text, COLA) == want
    # the result does not depend on the order of the labels
    reversed_pred = parse_choice(text, list(reversed(COLA)))
    assert (None if reversed_pred is None else 1 - reversed_pred) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("not_entailment", 1),
        ("not entailment", 1),
        ("Not-entailment.", 1),
        ("entailment", 0),
        ("Entailment: yes", 0),
    ],
)
def test_parser_longest_label_wins(text, want):
    assert parse_choice(text, ["entailment", "not_entailment"]) == want
    assert parse_choice(text, ["not_entailment", "entailment"]) == 1 - want


def test_parser_multiclass_case_punctuation():
    choices = ["World", "Sports", "Business", "Sci/Tech"]
    assert parse_choice(" sci/tech\n", choices) == 3
    assert parse_choice("Sports.", choices) == 1
    assert parse_choice("business news", choices) == 2
    assert parse_choice("sportswear", choices) is None
    assert parse_choice("True", ["True", "Neither", "False"]) == 0
    assert parse_choice("false", ["True", "Neither", "False"]) == 2


# --------------------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, max_length, stride", [(10, 4, 4), (10, 4, 2), (23, 8, 3), (5, 16, 16), (9, 4, 1)])
def test_perplexity_windows_score_every_token_once(n, max_length, stride):
    windows = scoring.perplexity_windows(n, max_length, stride)
    scored = []
    for begin, end, k in windows:
        assert 0 < end - begin <= max_length and 0 < k <= end - begin - 1
        scored += list(range(end - k, end))
    assert sorted(scored) == list(range(1, n))


def test_window_nll_matches_full_sequence_by_hand():
    table = bigram_table(vocab=7, seed=3)
    model = Bigram(table)
    tokens = [int(t) for t in torch.randint(0, 7, (15,), generator=torch.Generator().manual_seed(1))]
    log_probs = F.log_softmax(table, -1)
    want = -sum(float(log_probs[tokens[i - 1], tokens[i]]) for i in range(1, len(tokens)))
    windows = scoring.perplexity_windows(len(tokens), 6, 4)
    nll = scoring.window_nll(model, [tokens[b:e] for b, e, _ in windows], [k for _, _, k in windows], pad_token_id=0)
    assert float(nll.sum()) == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    lo, hi = scoring.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lo, hi = scoring.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in scoring.wilson_interval(0, 0))


def test_chance_levels_and_metric_chance():
    targets = [1, 1, 1, 0]
    levels = scoring.chance_levels(targets, 2)
    assert levels["majority"] == 0.75 and levels["uniform"] == 0.5 and levels["majority_class"] == 1
    assert scoring.metric_chance("accuracy", targets, 2) == 0.75
    assert scoring.metric_chance("mcc", targets, 2) == 0.0
    assert scoring.metric_chance("f1", targets, 2) == pytest.approx(2 * 0.75 / 1.75)


def test_metric_entry_wilson_for_accuracy_bootstrap_otherwise_and_failures_count_wrong():
    preds, targets = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    acc = scoring.metric_entry("accuracy", preds, targets, 2)
    assert acc["value"] == pytest.approx(0.8) and acc["ci_method"] == "wilson" and acc["chance"] == 0.7
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    mcc = scoring.metric_entry("mcc", preds, targets, 2, n_boot=200, seed=3)
    assert mcc["ci_method"] == "bootstrap" and mcc["chance"] == 0.0
    assert mcc["ci_low"] <= mcc["value"] <= mcc["ci_high"]
    assert mcc == scoring.metric_entry("mcc", preds, targets, 2, n_boot=200, seed=3)  # seeded
    given = scoring.metric_entry("f1", preds, targets, 2, value=0.5, n_boot=50)
    assert given["value"] == 0.5  # a value the caller computed is kept
    # parse failures (class n_classes) are wrong answers inside the bootstrap too: all-failures F1 CI is [0, 0]
    failed = scoring.metric_entry("f1", np.full(10, 2), targets, 2, failure_class=True, n_boot=50)
    assert (failed["value"], failed["ci_low"], failed["ci_high"]) == (0.0, 0.0, 0.0)


def test_class_metrics_and_parse_failure_class():
    preds, targets = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 0, 0, 1])
    assert scoring.class_metric("accuracy", preds, targets, 2) == 0.75
    assert scoring.class_metric("f1", preds, targets, 2) == pytest.approx(0.8)
    assert scoring.class_metric("mcc", preds, targets, 2) == pytest.approx(1 / math.sqrt(3), abs=1e-6)
    failures = torch.tensor([2, 2, 2, 2])  # all parse failures: always wrong, MCC 0 (not -1)
    assert scoring.class_metric("accuracy", failures, targets, 2, failure_class=True) == 0.0
    assert scoring.class_metric("mcc", failures, targets, 2, failure_class=True) == 0.0
    assert scoring.class_metric("f1", failures, targets, 2, failure_class=True) == 0.0


def test_mcc_is_zero_for_a_constant_predictor_and_matches_sklearn():
    from sklearn.metrics import matthews_corrcoef

    targets = torch.tensor([1] * 68 + [0] * 32)
    assert scoring.class_metric("mcc", torch.ones(100, dtype=torch.long), targets, 2) == 0.0
    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        t = torch.from_numpy(rng.integers(0, n_classes, 50))
        p = torch.from_numpy(rng.integers(0, n_classes, 50))
        assert scoring.class_metric("mcc", p, t, n_classes) == pytest.approx(matthews_corrcoef(t, p), abs=1e-9)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.array([0.0, 1.0] * 50)
    a = scoring.bootstrap_interval(np.mean, [values], n_boot=300, seed=1)
    b = scoring.bootstrap_interval(np.mean, [values], n_boot=300, seed=1)
    assert a == b and a[0] < 0.5 < a[1]


def test_squad_normalisation_and_scores_agree_with_torchmetrics():
    from torchmetrics.text import SQuAD

    assert scoring.normalize_answer("  The Denver  Broncos!") == "denver broncos"
    assert scoring.normalize_answer("an apple, a pear") == "apple pear"
    cases = [
        ("the Denver Broncos", ["Denver Broncos"]),
        ("Broncos", ["Denver Broncos", "Carolina"]),
        ("nothing", ["Denver Broncos"]),
        ("Santa Clara, California", ["Santa Clara, California", "Levi's"]),
    ]
    metric = SQuAD()
    ems, f1s = [], []
    for i, (pred, answers) in enumerate(cases):
        em, f1 = scoring.squad_scores(pred, answers)
        ems.append(em)
        f1s.append(f1)
        metric.update(
            [{"prediction_text": pred, "id": str(i)}],
            [{"answers": {"text": answers, "answer_start": [0] * len(answers)}, "id": str(i)}],
        )
    assert ems == [1.0, 0.0, 0.0, 1.0]
    assert f1s[1] == pytest.approx(2 * (1 * 0.5) / 1.5)
    got = metric.compute()
    assert float(got["exact_match"]) == pytest.approx(100 * np.mean(ems))
    assert float(got["f1"]) == pytest.approx(100 * np.mean(f1s), abs=1e-4)


@pytest.mark.parametrize(
    "prediction, answers, want",
    [
        (".", ["."], (1.0, 0.0)),  # both normalise to empty: EM 1, F1 0 (official v1.1; torchmetrics says F1 1)
        ("", ["."], (1.0, 0.0)),
        ("", ["Paris"], (0.0, 0.0)),
        ("Paris", ["paris."], (1.0, 1.0)),
        ("the cat sat", ["a cat sat down"], (0.0, 0.8)),  # "cat sat" vs "cat sat down": P 1, R 2/3
        ("cat cat", ["cat"], (0.0, 2 * 0.5 * 1 / 1.5)),  # token counts, not sets: P 1/2, R 1
        (".", [".", "the Broncos"], (1.0, 0.0)),
    ],
)
def test_squad_scores_follow_the_official_v1_1_rules(prediction, answers, want):
    assert scoring.squad_scores(prediction, answers) == pytest.approx(want)


def test_squad_totals_and_cis_use_the_official_rule():
    """Totals and bootstrap CIs come from the same per-question scores; F1 is the primary metric. torchmetrics'
    SQuAD would report F1 = 1 for the '.' question, the official script 0."""
    from torchmetrics.functional.text import squad

    from fnet.lit.zeroshot import ZeroShotModule
    from fnet.models import load_model

    cases = [(".", ["."]), ("Denver Broncos", ["Denver Broncos"]), ("Broncos", ["Denver Broncos"]), ("x", ["y"])]
    lm = load_model("tiny:gpt2")
    module = ZeroShotModule(lm.model, lm.tokenizer, "squad", bootstrap=200)
    ems, f1s = zip(*[scoring.squad_scores(p, a) for p, a in cases])
    module.store.update(list(range(len(cases))), [0] * len(cases), [-1] * len(cases), value_a=ems, value_b=f1s)
    out = module.compute_results()
    official_f1 = (0.0 + 1.0 + 2 * 1 * 0.5 / 1.5 + 0.0) / 4
    assert out["metric"] == "f1" and list(out["metrics"]) == ["f1", "exact_match"]
    assert out["score"] == pytest.approx(official_f1) and out["metrics"]["exact_match"]["value"] == pytest.approx(0.5)
    reference = squad(
        [{"prediction_text": p, "id": str(i)} for i, (p, _) in enumerate(cases)],
        [{"answers": {"text": a, "answer_start": [0] * len(a)}, "id": str(i)} for i, (_, a) in enumerate(cases)],
    )
    assert float(reference["f1"]) / 100 == pytest.approx(official_f1 + 0.25)  # the rule it differs by
    lo, hi = out["ci"]
    assert 0.0 <= lo <= official_f1 <= hi <= 1.0
    assert (lo, hi) == scoring.bootstrap_interval(np.mean, [np.asarray(f1s)], n_boot=200, seed=0)
