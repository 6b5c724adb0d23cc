"""POS key neurons: the neurons most important for predicting words of each part-of-speech tag.

Carries the method of Saki Norouzi, Masjedi & Hitzler (2025), "On the Analogy between Human Brain and LLMs:
Spotting Key Neurons in Grammar Perception" (no code released), onto fnet's signals for any registry model:

1. **Samples.** UD English-EWT sentences (:mod:`fnet.conllu`) are rebuilt as text and tokenized; each word's
   first token carries its UPOS tag (:func:`align_words`). A *sample* is one word of one sentence with at least
   one token before it: the model reads the sentence up to the token before the word's first token and predicts
   that first token.
2. **Attribution** (:mod:`fnet.attribution`). The target of a sample is ``log p(first token of the word |
   prefix)``. Each sample is its own sequence (the prefix; no later words are visible, so the attribution is
   exactly that one prediction's, not mixed with later targets as it would be if all words of a sentence were
   attributed in one sequence). Every layer's signal is patched (integrated gradients or activation x gradient);
   the neuron scores of a sample are the attributions of the neurons **at the predicting position**
   (``positions=target``, default: where the paper's "neurons predicting the word" fire) or summed over the
   prefix's positions (``positions=sum``, total credit of a (layer, unit) wherever it fired).
3. **Key neurons.** Per sample the top ``top_fraction`` (5 %) neurons by ``|attribution|`` (``rank_by=abs``;
   ``signed`` keeps only neurons that raise the word's probability); per tag the ``top_k`` (100) neurons kept
   most often (:class:`fnet.attribution.KeyNeuronCounter`; ``rule=contrast`` ranks by that frequency minus the
   other tags' mean instead, since the paper's rule lets neurons that matter for *every* word top every tag).
   Saved as a :class:`fnet.networks.NetworkSet`, one network per tag (``maps`` = the fraction of the tag's
   samples that kept each neuron).
4. **Classifier.** Logistic regression (scikit-learn) on activations of the *union* of all tags' key neurons
   (one multiclass probe, as a tagger would be; per-tag sets are one-vs-rest by construction and would leave
   each tag's probe blind to the others' evidence), predicting the UPOS tag of each word of held-out text from
   the activations at the word's first token (``position=word``) or at the position predicting it
   (``position=before``). Trained on the dev split, tested on the test split, compared with the same number of
   random neurons matched per layer (several seeds), all neurons, and the majority class; 95 % CIs by bootstrap
   over test words (random rows: mean and t-interval over seeds).
5. **Lesion.** Zeroing one tag's key neurons (:func:`fnet.masking.apply_mask`) should lower the model's
   log-likelihood of that tag's words more than other tags' words, and more than a per-layer matched random mask.
6. **ICA overlap.** IoU between the POS networks and the ICA functional networks of the same config
   (:func:`fnet.analysis.networks_for_config`).

``run_pos_analysis(cfg)`` runs everything from the Hydra config (``python analyze.py analysis=pos``) and writes
``pos_report.md``, ``pos_key_neurons.safetensors``, CSVs and figures under ``cfg.paths.output_dir``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fnet.attribution import KeyNeuronCounter, attribute
from fnet.conllu import UPOS_TAGS, Sentence, Word, load_treebank, sentence_text
from fnet.models import LoadedModel
from fnet.networks import NetworkSet
from fnet.pos_data import check_lesion_tags, drop_shared_sentences

log = logging.getLogger(__name__)

__all__ = [
    "AlignedSentence",
    "align_words",
    "align_sentences",
    "WordSamples",
    "word_samples",
    "cap_per_tag",
    "pad_batch",
    "attribute_samples",
    "record_word_features",
    "mean_signal",
    "columns_of",
    "random_matched_columns",
    "bootstrap_metrics",
    "seed_interval",
    "compare_classifiers",
    "word_log_probs",
    "lesion_effects",
    "key_neuron_set",
    "run_pos_analysis",
]


# --------------------------------------------------------------------------------------------------------------
# Words -> tokens
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AlignedSentence:
    """A sentence as the model sees it.

    Attributes:
        sent_id, text: the sentence's id and its rebuilt text.
        input_ids: the token ids of ``text`` (special tokens included, as the tokenizer adds them).
        first_token: per word, the index in ``input_ids`` of the word's first token; -1 when the word has no
            token of its own (see :func:`align_words`) or was cut off by ``max_length``.
        tags: per word, its UPOS tag.
    """

    sent_id: str
    text: str
    input_ids: list[int]
    first_token: list[int]
    tags: list[str]

    def token_tags(self) -> list[str | None]:
        """Per token: the tag of the word it starts, or None (later tokens of a word, special tokens, spaces)."""
        out: list[str | None] = [None] * len(self.input_ids)
        for token, tag in zip(self.first_token, self.tags):
            if token >= 0:
                out[token] = tag
        return out


def align_words(
    tokenizer, words: Sequence[Word], max_length: int | None = None
) -> tuple[str, list[int], list[int]]:
    """Tokenize a sentence rebuilt from its words and find each word's first token.

    The text is rebuilt with :func:`fnet.conllu.sentence_text` (``SpaceAfter=No`` respected) and tokenized with
    the tokenizer's offset mapping (a fast tokenizer is required). With ``(a, b)`` a token's character span,
    ``(s, e)`` the word's span and ``p`` the end of the previous word (0 for the first word), the word's first
    token is the first token with

        a >= p  and  a < e  and  b > s     (and b > a: special tokens have empty spans)

    i.e. the first token that touches the word's characters and does not start inside an earlier word. So:

    * a token that merges the space before the word with the word's start (GPT-2/Llama-3 style ``Ġword``, whose
      span starts at the space whether or not the tokenizer trims offsets) is the word's first token and
      carries the word's tag;
    * a token made only of whitespace (``Ġ`` before digits) touches no word and carries no tag;
    * a word whose start is inside a token that began in the previous word (e.g. ``.`` merged into ``area.``)
      has no token of its own: it gets -1 and is left out of samples. If a token started earlier but a later
      one starts inside the word (``didn't`` = ``did`` + ``n't`` tokenized ``Ġdidn`` + ``'t``), that later
      token (``'t``) is the word's first token.

    Returns ``(text, input_ids, first_token)`` with ``first_token[i]`` in ``[0, len(input_ids))`` or -1.
    """
    text, spans = sentence_text(words)
    kwargs: dict[str, Any] = {"return_offsets_mapping": True, "add_special_tokens": True}
    if max_length is not None:
        kwargs.update(truncation=True, max_length=int(max_length))
    try:
        encoded = tokenizer(text, **kwargs)
    except NotImplementedError as err:
        raise ValueError("word-to-token alignment needs a fast tokenizer (offset mapping)") from err
    input_ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    first_token: list[int] = []
    previous_end = 0
    cursor = 0  # tokens before it start inside earlier words or end before the current word
    for start, end in spans:
        found = -1
        for j in range(cursor, len(offsets)):
            a, b = offsets[j]
            if b <= a:  # special token or empty span
                continue
            if a >= end:  # past the word
                break
            if a >= previous_end and b > start:
                found = j
                break
        first_token.append(found)
        if found >= 0:
            cursor = found + 1
        previous_end = end
    return text, input_ids, first_token


def align_sentences(tokenizer, sentences: Sequence[Sentence], max_length: int | None = None) -> list[AlignedSentence]:
    out = []
    for sentence in sentences:
        text, input_ids, first_token = align_words(tokenizer, sentence.words, max_length)
        out.append(AlignedSentence(sentence.sent_id, text, input_ids, first_token, sentence.tags))
    return out


# --------------------------------------------------------------------------------------------------------------
# Samples (one per aligned word)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class WordSamples:
    """Aligned words as flat arrays (one entry per sample).

    Attributes:
        sentence: [n] index into the aligned sentence list.
        word: [n] word index within the sentence.
        token: [n] index of the word's first token.
        tag: [n] tag id (index into ``tag_names``).
        tag_names: the tag vocabulary.
    """

    sentence: np.ndarray
    word: np.ndarray
    token: np.ndarray
    tag: np.ndarray
    tag_names: list[str] = field(default_factory=lambda: list(UPOS_TAGS))

    def __len__(self) -> int:
        return int(self.sentence.shape[0])

    def subset(self, index: np.ndarray) -> "WordSamples":
        return WordSamples(self.sentence[index], self.word[index], self.token[index], self.tag[index], self.tag_names)

    def counts(self) -> np.ndarray:
        """Samples per tag: [n_tags] int."""
        return np.bincount(self.tag, minlength=len(self.tag_names))


def word_samples(aligned: Sequence[AlignedSentence], tag_names: Sequence[str], *, need_context: bool = True) -> WordSamples:
    """Every aligned word (``first_token >= 0``) as a sample. ``need_context``: only words with a token before
    their first token (a prediction needs a prefix; a tokenizer without BOS gives the first word none).
    Tags not in ``tag_names`` are an error."""
    index = {t: i for i, t in enumerate(tag_names)}
    rows = []
    for s, sentence in enumerate(aligned):
        for w, (token, tag) in enumerate(zip(sentence.first_token, sentence.tags)):
            if token < 0 or (need_context and token < 1):
                continue
            if tag not in index:
                raise ValueError(f"sentence {sentence.sent_id}: tag {tag!r} is not in the tag list {list(tag_names)}")
            rows.append((s, w, token, index[tag]))
    array = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return WordSamples(array[:, 0], array[:, 1], array[:, 2], array[:, 3], list(tag_names))


def cap_per_tag(samples: WordSamples, max_per_tag: int | None, seed: int = 0) -> WordSamples:
    """At most ``max_per_tag`` samples per tag, drawn uniformly (seeded); rare tags keep all theirs. Keeps the
    original order. ``None`` = no cap."""
    if max_per_tag is None:
        return samples
    rng = np.random.default_rng(seed)
    keep = []
    for tag in range(len(samples.tag_names)):
        rows = np.flatnonzero(samples.tag == tag)
        if rows.size > max_per_tag:
            rows = rng.choice(rows, size=int(max_per_tag), replace=False)
        keep.append(rows)
    return samples.subset(np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64))


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both [batch, longest]."""
    pad_id = 0 if pad_id is None else int(pad_id)
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[b, : len(row)] = 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------------------------
# Attribution over samples -> key-neuron counts
# --------------------------------------------------------------------------------------------------------------
def attribute_samples(
    lm: LoadedModel,
    aligned: Sequence[AlignedSentence],
    samples: WordSamples,
    counter: KeyNeuronCounter,
    *,
    signal: str = "mlp_out",
    method: str = "act_x_grad",
    steps: int = 16,
    baseline: str | torch.Tensor = "zero",
    alpha_batch: int | None = None,
    batch_size: int = 16,
    positions: str = "target",
    progress: bool = False,
) -> np.ndarray:
    """Attribute every sample's prediction (prefix = the sentence up to the token before the word) and feed the
    per-sample neuron scores into ``counter``. Prefixes are sorted by length so a batch wastes little padding.

    Returns the samples' clean target log-probabilities, [n] float64 (in sample order).
    """
    if positions not in ("target", "sum"):
        raise ValueError(f"unknown positions {positions!r}; valid: 'target', 'sum'")
    order = np.argsort(samples.token, kind="stable")  # prefix length = token index
    log_probs = np.zeros(len(samples), dtype=np.float64)
    pad_id = lm.tokenizer.pad_token_id
    with tqdm(total=len(samples), desc=f"attribute {method}", unit="word", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            prefixes = [aligned[samples.sentence[i]].input_ids[: samples.token[i]] for i in rows]
            targets = torch.as_tensor([aligned[samples.sentence[i]].input_ids[samples.token[i]] for i in rows])
            input_ids, attention_mask = pad_batch(prefixes, pad_id)
            target_positions = torch.as_tensor([len(p) - 1 for p in prefixes])
            result = attribute(
                lm.model, input_ids, attention_mask, target_positions, targets, signal=signal, method=method,
                steps=steps, baseline=baseline, alpha_batch=alpha_batch, spec=lm.arch,
            )
            scores = result.at_targets(target_positions) if positions == "target" else result.summed_over_positions()
            counter.update(scores.reshape(len(rows), -1), samples.tag[rows])  # [batch, layer*unit]
            log_probs[rows] = result.target_logprob.double().numpy()
            bar.update(len(rows))
    return log_probs


# --------------------------------------------------------------------------------------------------------------
# Activations of words (classifier features, mean baseline)
# --------------------------------------------------------------------------------------------------------------
def record_word_features(
    lm: LoadedModel,
    aligned: Sequence[AlignedSentence],
    samples: WordSamples,
    *,
    signal: str = "mlp_out",
    batch_size: int = 8,
    position: str = "word",
    progress: bool = False,
) -> np.ndarray:
    """Activations ``X  # [n_samples, n_layers * width]`` float32 (layer-major columns, as NetworkSet.flat()).

    ``position="word"``: at each word's first token; ``"before"``: at the token before it (the position that
    predicts the word). Sentences are recorded once each with :class:`fnet.record.recorder.Recorder`.
    """
    from fnet.record.recorder import Recorder

    if position not in ("word", "before"):
        raise ValueError(f"unknown position {position!r}; valid: 'word', 'before'")
    shift = 0 if position == "word" else 1
    if shift and len(samples) and int(samples.token.min()) < 1:
        raise ValueError("position='before' needs samples with a token before the word (need_context=True)")
    recorder = Recorder(lm, signal, batch_size=batch_size, progress=False)
    n_features = lm.n_layers * lm.width(signal)
    X = np.zeros((len(samples), n_features), dtype=np.float32)
    by_sentence: dict[int, np.ndarray] = {}
    for row, s in enumerate(samples.sentence):
        by_sentence.setdefault(int(s), []).append(row)  # type: ignore[arg-type]
    sentences = sorted(by_sentence, key=lambda s: -len(aligned[s].input_ids))
    with tqdm(total=len(sentences), desc=f"record {signal}", unit="sent", disable=not progress) as bar:
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            acts = recorder.record_batch([aligned[s].input_ids for s in batch])  # [tokens_i, n_features] each
            for s, a in zip(batch, acts):
                rows = np.asarray(by_sentence[s])
                X[rows] = a[torch.as_tensor(samples.token[rows] - shift)].numpy()
            bar.update(len(batch))
    return X


def mean_signal(X: np.ndarray, n_layers: int, width: int) -> torch.Tensor:
    """Per-neuron mean of recorded activations, ``[layer, unit]`` (the IG ``mean`` baseline)."""
    return torch.from_numpy(np.asarray(X, dtype=np.float64).mean(axis=0)).float().reshape(n_layers, width)


# --------------------------------------------------------------------------------------------------------------
# Classifier comparison
# --------------------------------------------------------------------------------------------------------------
def columns_of(mask: torch.Tensor) -> np.ndarray:
    """Flat layer-major column indices of a ``[layer, unit]`` bool mask."""
    return torch.nonzero(torch.as_tensor(mask).reshape(-1)).flatten().numpy()


def random_matched_columns(mask: torch.Tensor, seed: int) -> np.ndarray:
    """Columns of a random mask with the same number of neurons in every layer as ``mask`` (drawn from all the
    layer's units: the paper's unbiased "same number of random neurons" control)."""
    from fnet.masking import random_matched_mask

    return columns_of(random_matched_mask(torch.as_tensor(mask, dtype=torch.bool), seed=seed).mask)


def _macro_f1(labels):
    from sklearn.metrics import f1_score

    def statistic(y_true, y_pred):
        return f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)

    return statistic


def bootstrap_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: Sequence[int] | None = None, n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """Accuracy and macro-F1 (over ``labels``, default the test labels) with percentile bootstrap CIs over test
    words (``scipy.stats.bootstrap``, paired resampling of (true, predicted))."""
    from scipy.stats import bootstrap

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true) if labels is None else np.asarray(labels)
    macro_f1 = _macro_f1(labels)
    out = {"accuracy": float((y_true == y_pred).mean()), "macro_f1": float(macro_f1(y_true, y_pred))}
    if n_resamples and len(y_true) > 1:
        rng = np.random.default_rng(seed)
        correct = (y_true == y_pred).astype(np.float64)
        acc = bootstrap((correct,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                        method="percentile", random_state=rng, vectorized=True)
        f1 = bootstrap((y_true, y_pred), macro_f1, paired=True, vectorized=False, n_resamples=n_resamples,
                       confidence_level=confidence, method="percentile", random_state=rng)
        out.update(accuracy_lo=float(acc.confidence_interval.low), accuracy_hi=float(acc.confidence_interval.high),
                   macro_f1_lo=float(f1.confidence_interval.low), macro_f1_hi=float(f1.confidence_interval.high))
    return out


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval over seeds: ``(mean, low, high)``; one value gives a zero-width interval."""
    from scipy.stats import t as student_t

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    half = float(student_t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def _fit_predict(X_train, y_train, X_test, columns, *, C: float, max_iter: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    columns = np.asarray(columns)
    # One BLAS thread: once torch's OpenMP pool has run, OpenBLAS's own threads contend with it and a small
    # lbfgs fit slows down ~100x (measured: 14 s vs 0.1 s for 700 words x 45 neurons on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(X_train[:, columns], y_train)
        return model.predict(X_test[:, columns])


def compare_classifiers(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    key_mask: torch.Tensor,
    *,
    random_seeds: Sequence[int] = (0, 1, 2),
    all_neurons: bool = True,
    C: float = 1.0,
    max_iter: int = 300,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Key neurons vs matched random neurons vs all neurons vs majority class, on the same train/test words.

    Args:
        X_train, X_test: [words, n_layers*width] activations (layer-major columns).
        y_train, y_test: [words] tag ids.
        key_mask: [layer, unit] bool, the neurons of the key-neuron classifier.

    Returns:
        (rows, seed_rows): one summary row per classifier (accuracy / macro-F1 with 95 % CI: bootstrap over test
        words, or for ``random`` mean and t-interval over seeds) and one row per random seed.
    """
    from sklearn.dummy import DummyClassifier

    labels = np.unique(y_test)
    key_columns = columns_of(key_mask)
    rows: list[dict] = []

    def timed_row(name: str, columns: np.ndarray | None, predict) -> dict:
        started = time.perf_counter()
        y_pred = predict()
        row = {"features": name, "n_neurons": 0 if columns is None else int(len(columns))}
        row.update(bootstrap_metrics(y_test, y_pred, labels=labels, n_resamples=n_bootstrap, seed=seed))
        row["seconds"] = time.perf_counter() - started
        return row

    if len(key_columns):
        rows.append(timed_row("key neurons", key_columns, lambda: _fit_predict(
            X_train, y_train, X_test, key_columns, C=C, max_iter=max_iter, seed=seed)))
    seed_rows = []
    for s in random_seeds:
        if not len(key_columns):
            break
        columns = random_matched_columns(key_mask, seed=int(s))
        started = time.perf_counter()
        y_pred = _fit_predict(X_train, y_train, X_test, columns, C=C, max_iter=max_iter, seed=seed)
        seed_rows.append(dict(
            seed=int(s), n_neurons=int(len(columns)), overlap_with_key=int(np.intersect1d(columns, key_columns).size),
            seconds=time.perf_counter() - started, **bootstrap_metrics(y_test, y_pred, labels=labels, n_resamples=0),
        ))
    if seed_rows:
        acc, acc_lo, acc_hi = seed_interval([r["accuracy"] for r in seed_rows])
        f1, f1_lo, f1_hi = seed_interval([r["macro_f1"] for r in seed_rows])
        rows.append({"features": f"random matched ({len(seed_rows)} seeds)", "n_neurons": seed_rows[0]["n_neurons"],
                     "accuracy": acc, "accuracy_lo": acc_lo, "accuracy_hi": acc_hi, "macro_f1": f1,
                     "macro_f1_lo": f1_lo, "macro_f1_hi": f1_hi, "seconds": sum(r["seconds"] for r in seed_rows)})
    if all_neurons:
        every = np.arange(X_train.shape[1])
        rows.append(timed_row("all neurons", every, lambda: _fit_predict(
            X_train, y_train, X_test, every, C=C, max_iter=max_iter, seed=seed)))
    majority = DummyClassifier(strategy="most_frequent").fit(X_train[:, :1], y_train)
    rows.append(timed_row("majority class", None, lambda: majority.predict(X_test[:, :1])))
    return rows, seed_rows


# --------------------------------------------------------------------------------------------------------------
# Lesion
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def word_log_probs(
    lm: LoadedModel,
    aligned: Sequence[AlignedSentence],
    samples: WordSamples,
    *,
    signal: str = "mlp_out",
    mask: torch.Tensor | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """``log p(first token of the word | sentence prefix)`` per sample, [n] float64, optionally with ``mask
    # [layer, unit]`` zeroed (:func:`fnet.masking.apply_mask`) at every position. One forward per sentence batch."""
    from fnet.attribution import target_log_probs
    from fnet.masking import apply_mask

    out = np.zeros(len(samples), dtype=np.float64)
    by_sentence: dict[int, list[int]] = {}
    for row, s in enumerate(samples.sentence):
        by_sentence.setdefault(int(s), []).append(row)
    sentences = sorted(by_sentence, key=lambda s: -len(aligned[s].input_ids))
    device = lm.device
    with apply_mask(lm.model, mask, signal=signal, spec=lm.arch):
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            input_ids, attention_mask = pad_batch([aligned[s].input_ids for s in batch], lm.tokenizer.pad_token_id)
            logits = lm.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                              use_cache=False).logits  # [batch, seq, vocab]
            b_index, rows = [], []
            for b, s in enumerate(batch):
                b_index += [b] * len(by_sentence[s])
                rows += by_sentence[s]
            rows_arr = np.asarray(rows)
            tokens = torch.as_tensor(samples.token[rows_arr])
            b_index_t = torch.as_tensor(b_index)
            picked = logits[b_index_t.to(logits.device), (tokens - 1).to(logits.device)]  # [n, vocab]
            targets = input_ids[b_index_t, tokens]
            out[rows_arr] = target_log_probs(picked[:, None], torch.zeros_like(tokens), targets).double().cpu().numpy()
    return out


def lesion_effects(
    lm: LoadedModel,
    aligned: Sequence[AlignedSentence],
    samples: WordSamples,
    key_masks: torch.Tensor,
    tags: Sequence[int],
    *,
    signal: str = "mlp_out",
    random_seeds: Sequence[int] = (0, 1),
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[dict], np.ndarray]:
    """Change of the words' log-likelihood when one tag's key neurons are zeroed.

    For each tag ``t`` in ``tags`` (index into ``key_masks  # [n_tags, layer, unit]``): ``delta = log p(masked)
    - log p(clean)`` per word; the row reports its mean over words of tag ``t`` (``on_tag``) and over all other
    words (``off_tag``), for the key mask and for per-layer matched random masks (mean over seeds), with a 95 %
    t-interval of the on-tag mean over words. ``selective`` is True when the key mask lowers the tag's words
    more than other words *and* more than the random masks do.

    Returns ``(rows, clean_log_probs [n])``.
    """
    from fnet.masking import random_matched_mask

    clean = word_log_probs(lm, aligned, samples, signal=signal, batch_size=batch_size)
    rows = []
    for t in tqdm(list(tags), desc="lesion", unit="tag", disable=not progress):
        mask = key_masks[t].to(torch.bool)
        on = samples.tag == t
        if not on.any() or on.all():
            continue
        delta = word_log_probs(lm, aligned, samples, signal=signal, mask=mask, batch_size=batch_size) - clean
        random_on, random_off = [], []
        for s in random_seeds:
            control = random_matched_mask(mask, seed=int(s)).mask
            d = word_log_probs(lm, aligned, samples, signal=signal, mask=control, batch_size=batch_size) - clean
            random_on.append(d[on].mean())
            random_off.append(d[~on].mean())
        mean_on, lo_on, hi_on = _mean_interval(delta[on])
        row = {
            "tag": samples.tag_names[t], "n_neurons": int(mask.sum()), "n_words_tag": int(on.sum()),
            "n_words_other": int((~on).sum()), "key_on_tag": mean_on, "key_on_tag_lo": lo_on, "key_on_tag_hi": hi_on,
            "key_off_tag": float(delta[~on].mean()),
        }
        if random_on:
            row.update(random_on_tag=float(np.mean(random_on)), random_off_tag=float(np.mean(random_off)))
        row["selectivity"] = row["key_on_tag"] - row["key_off_tag"]
        row["selective"] = bool(row["key_on_tag"] < row["key_off_tag"] and
                                (not random_on or row["key_on_tag"] < row["random_on_tag"]))
        rows.append(row)
    return rows, clean


def _mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    return seed_interval(values, confidence)  # the same t-interval, over words


# --------------------------------------------------------------------------------------------------------------
# NetworkSet
# --------------------------------------------------------------------------------------------------------------
def key_neuron_set(
    counter: KeyNeuronCounter, top_k: int, n_layers: int, width: int, tag_names: Sequence[str],
    *, min_samples: int = 1, rule: str = "frequency", provenance: dict | None = None,
) -> tuple[NetworkSet, list[int]]:
    """One network per tag with at least ``min_samples`` samples: its ``top_k`` key neurons (selection ``rule``,
    see :meth:`KeyNeuronCounter.key_neurons`). ``maps`` hold the fraction of the tag's samples that kept each
    neuron. Returns ``(netset, tag ids of its networks)``."""
    keep = [t for t in range(counter.n_tags) if int(counter.n_samples[t]) >= max(1, int(min_samples))]
    chosen = counter.key_neurons(top_k, rule)
    masks = torch.zeros(len(keep), n_layers * width, dtype=torch.bool)
    for k, t in enumerate(keep):
        masks[k, chosen[t]] = True
    frequency = counter.frequency()[keep].float().reshape(len(keep), n_layers, width)
    prov = dict(provenance or {})
    prov.update(
        kind="pos_key_neurons",
        K=len(keep),
        tags=[tag_names[t] for t in keep],
        n_samples_per_tag=[int(counter.n_samples[t]) for t in keep],
        top_k=int(top_k),
        selection_rule=rule,
        top_fraction=counter.top_fraction,
        rank_by=counter.rank_by,
        maps="fraction of the tag's samples whose top-fraction set kept the neuron",
    )
    netset = NetworkSet.from_masks(masks.reshape(len(keep), n_layers, width), prov, maps=frequency)
    return netset, keep


# --------------------------------------------------------------------------------------------------------------
# The analysis run
# --------------------------------------------------------------------------------------------------------------
def _max_positions(lm: LoadedModel) -> int | None:
    """The model's context length from its config (``n_positions`` / ``max_position_embeddings`` / ``seq_length``),
    or None when the config does not say."""
    for key in ("n_positions", "max_position_embeddings", "seq_length"):
        value = getattr(lm.model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _subset(sentences: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of ``limit`` sentences, in file order (the files are ordered by genre)."""
    if limit is None or limit >= len(sentences):
        return list(sentences)
    rng = np.random.default_rng(seed)
    return [sentences[i] for i in np.sort(rng.choice(len(sentences), size=int(limit), replace=False))]


def _write_csv(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_pos_analysis(cfg) -> dict:
    """POS key neurons from the Hydra config (``analysis: pos``); see the module docstring and
    ``conf/analysis/pos.yaml`` for the options. Returns a dict of the results (tables as lists of rows)."""
    from hydra.utils import instantiate

    from fnet.attribution import n_top
    from fnet.provenance import provenance

    timings: dict[str, float] = {}
    started_all = time.perf_counter()

    def lap(name: str, since: float) -> float:
        timings[name] = time.perf_counter() - since
        log.info("pos: %s took %.1f s", name, timings[name])
        return time.perf_counter()

    a = cfg.analysis
    seed = int(cfg.seed)
    out = Path(cfg.paths.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    signal = str(cfg.record.signal)
    max_length = int(cfg.record.max_length)
    # sentences are short: batch more of them than record.batch_size (sized for 1024-token texts)
    sentence_batch = int(cfg.analysis.sentence_batch_size or cfg.record.batch_size)
    progress = bool(a.progress)
    torch.manual_seed(seed)

    t = time.perf_counter()
    lm = instantiate(cfg.model) if not isinstance(cfg.model, LoadedModel) else cfg.model
    n_layers, width = lm.n_layers, lm.width(signal)
    model_limit = _max_positions(lm)
    if model_limit is not None and model_limit < max_length:
        log.info("pos: record.max_length=%d exceeds the model's %d positions; sentences are cut at %d tokens",
                 max_length, model_limit, model_limit)
        max_length = model_limit
    t = lap("load model", t)

    # --- data -------------------------------------------------------------------------------------------
    data_dir = a.treebank.dir or str(Path(cfg.paths.data_dir) / "ud_english_ewt")
    tb = dict(pattern=str(a.treebank.pattern),
              source=str(a.treebank.source),
              hub_name=str(a.treebank.hub_name),
              hub_config=str(a.treebank.hub_config))
    train_split, test_split = str(a.treebank.train_split), str(a.treebank.test_split)
    train_all = load_treebank(train_split, data_dir, **tb)
    test_all = load_treebank(test_split, data_dir, **tb)
    n_shared = 0
    if test_split != train_split:  # test on sentences the key neurons and classifier never saw
        test_all, n_shared = drop_shared_sentences(test_all, train_all)
    extra_tags = sorted({w.upos for s in train_all + test_all for w in s.words} - set(UPOS_TAGS))
    tag_names = list(UPOS_TAGS) + extra_tags
    check_lesion_tags(a.lesion.tags, tag_names)

    attr_sentences = _subset(train_all, a.attribution.max_sentences, seed)
    train_sentences = _subset(train_all, a.classifier.max_train_sentences, seed + 1)
    test_sentences = _subset(test_all, a.classifier.max_test_sentences, seed + 2)
    lesion_sentences = _subset(test_all, a.lesion.max_sentences, seed + 3)
    tok = lm.tokenizer
    attr_aligned = align_sentences(tok, attr_sentences, max_length)
    train_aligned = align_sentences(tok, train_sentences, max_length)
    test_aligned = align_sentences(tok, test_sentences, max_length)
    lesion_aligned = align_sentences(tok, lesion_sentences, max_length)
    position = str(a.classifier.position)
    attr_samples = cap_per_tag(word_samples(attr_aligned, tag_names), a.attribution.max_samples_per_tag,
                               seed)
    train_samples = word_samples(train_aligned, tag_names, need_context=position == "before")
    test_samples = word_samples(test_aligned, tag_names, need_context=position == "before")
    lesion_samples = word_samples(lesion_aligned, tag_names)
    n_words_attr = sum(len(s.words) for s in attr_sentences)
    n_unaligned = sum(sum(1 for f in s.first_token if f < 0) for s in attr_aligned)
    data_rows = [
        {"set": "attribution", "split": train_split, "sentences": len(attr_sentences), "words": n_words_attr,
         "samples": len(attr_samples)},
        {"set": "classifier train", "split": train_split, "sentences": len(train_sentences),
         "words": sum(len(s.words) for s in train_sentences), "samples": len(train_samples)},
        {"set": "classifier test", "split": test_split, "sentences": len(test_sentences),
         "words": sum(len(s.words) for s in test_sentences), "samples": len(test_samples)},
        {"set": "lesion", "split": test_split, "sentences": len(lesion_sentences),
         "words": sum(len(s.words) for s in lesion_sentences), "samples": len(lesion_samples)},
    ]
    t = lap("data + alignment", t)

    # --- classifier features (recorded first: the IG mean baseline comes from the train words) ------------
    rec = dict(signal=signal, batch_size=sentence_batch, position=position, progress=progress)
    X_train = record_word_features(lm, train_aligned, train_samples, **rec)
    X_test = record_word_features(lm, test_aligned, test_samples, **rec)
    t = lap("record classifier features", t)

    # --- attribution -> key neurons -----------------------------------------------------------------------
    method = str(a.attribution.method)
    steps = int(a.attribution.steps)
    baseline_name = str(a.attribution.baseline)
    if baseline_name == "mean":
        baseline: Any = mean_signal(X_train, n_layers, width)
    elif baseline_name == "zero":
        baseline = "zero"
    else:
        raise ValueError(f"unknown attribution.baseline {baseline_name!r}; valid: 'zero', 'mean'")
    top_fraction = float(a.selection.top_fraction)
    top_k = int(a.selection.top_k)
    rank_by = str(a.selection.rank_by)
    positions = str(a.attribution.positions)
    counter = KeyNeuronCounter(len(tag_names), n_layers * width, top_fraction, rank_by)
    target_lp = attribute_samples(
        lm, attr_aligned, attr_samples, counter, signal=signal, method=method, steps=steps, baseline=baseline,
        alpha_batch=a.attribution.alpha_batch, batch_size=int(a.attribution.batch_size),
        positions=positions, progress=progress,
    )
    t = lap(f"attribution ({method})", t)

    prov = provenance(
        model=lm.name, model_source=lm.source, signal=signal, seed=seed,
        data=f"UD English-EWT {train_split} ({len(attr_sentences)} sentences, {len(attr_samples)} words)",
        method=method, steps=steps if method == "ig" else 1, baseline=baseline_name, positions=positions,
        n_layers=n_layers, width=width, per_sample_kept=n_top(n_layers * width, top_fraction),
    )
    rule = str(a.selection.rule)
    netset, net_tags = key_neuron_set(counter, top_k, n_layers, width, tag_names, rule=rule,
                                      min_samples=int(a.selection.min_samples), provenance=prov)
    net_path = netset.save(out / "pos_key_neurons.safetensors")
    counter.save(out / "pos_selection_counts.safetensors", tag_names)  # re-select without attributing again
    key_rows = []
    frequency, mean_score = counter.frequency(), counter.mean_score()
    chosen_neurons, contrast = counter.key_neurons(top_k, rule), counter.contrast()
    for tag in net_tags:
        for rank, neuron in enumerate(chosen_neurons[tag].tolist()):
            key_rows.append({"tag": tag_names[tag], "rank": rank, "layer": neuron // width, "unit": neuron % width,
                             "count": int(counter.counts[tag, neuron]), "frequency": float(frequency[tag, neuron]),
                             "contrast": float(contrast[tag, neuron]), "mean_score": float(mean_score[tag, neuron])})
    _write_csv(key_rows, out / "pos_key_neurons.csv")
    counts_layer = netset.counts_per_layer()  # [K, layer]
    tag_rows = []
    for k, tag in enumerate(net_tags):
        tag_rows.append({
            "network": k, "tag": tag_names[tag], "samples": int(counter.n_samples[tag]),
            "neurons": int(netset.sizes()[k]),
            "mean_frequency": float(frequency[tag][netset.flat()[k]].mean()) if int(netset.sizes()[k]) else 0.0,
            "mean_logprob": float(target_lp[attr_samples.tag == tag].mean()),
            "top_layers": ",".join(str(int(x)) for x in torch.argsort(counts_layer[k], descending=True)[:3]),
        })
    skipped_tags = [tag_names[t] for t in range(len(tag_names))
                    if t not in net_tags and int(counter.n_samples[t]) > 0]
    _write_csv(tag_rows, out / "pos_tags.csv")
    figures = []
    if netset.n_networks:
        from fnet.report import plot_counts_per_layer, plot_network_maps

        figures.append(plot_network_maps(netset, fig_dir / "pos_key_neurons_maps.png", ncols=4))
        figures.append(plot_counts_per_layer(netset, fig_dir / "pos_key_neurons_per_layer.png", kind="heatmap"))
    t = lap("key neurons + figures", t)

    # --- classifier -----------------------------------------------------------------------------------------
    union = netset.union()  # [layer, unit]
    class_rows, seed_rows = [], []
    if len(train_samples) and len(test_samples) and netset.n_networks:
        class_rows, seed_rows = compare_classifiers(
            X_train, train_samples.tag, X_test, test_samples.tag, union,
            random_seeds=list(a.classifier.random_seeds),
            all_neurons=bool(a.classifier.all_neurons), C=float(a.classifier.C),
            max_iter=int(a.classifier.max_iter), n_bootstrap=int(a.classifier.bootstrap),
            seed=seed,
        )
        _write_csv(class_rows, out / "pos_classifier.csv")
        _write_csv(seed_rows, out / "pos_classifier_seeds.csv")
    del X_train, X_test
    t = lap("classifier", t)

    # --- lesion ---------------------------------------------------------------------------------------------
    lesion_rows: list[dict] = []
    if bool(a.lesion.enabled) and netset.n_networks and len(lesion_samples):
        wanted = a.lesion.tags
        chosen = [k for k, tag in enumerate(net_tags) if wanted is None or tag_names[tag] in list(wanted)]
        min_words = int(a.lesion.min_words)
        chosen = [k for k in chosen if int((lesion_samples.tag == net_tags[k]).sum()) >= min_words]
        # lesion_effects indexes masks by tag id
        masks_by_tag = torch.zeros(len(tag_names), n_layers, width, dtype=torch.bool)
        for k, tag in enumerate(net_tags):
            masks_by_tag[tag] = netset.masks[k]
        lesion_rows, _ = lesion_effects(
            lm, lesion_aligned, lesion_samples, masks_by_tag, [net_tags[k] for k in chosen], signal=signal,
            random_seeds=list(a.lesion.random_seeds), batch_size=sentence_batch, progress=progress,
        )
        _write_csv(lesion_rows, out / "pos_lesion.csv")
    t = lap("lesion", t)

    # --- ICA overlap ----------------------------------------------------------------------------------------
    ica_rows: list[dict] = []
    ica_note = "skipped (analysis.ica_overlap=false)"
    if bool(a.ica_overlap) and netset.n_networks:
        ica_rows, ica_note, ica_figure = ica_overlap(cfg, lm, netset, fig_dir)
        if ica_figure is not None:
            figures.append(ica_figure)
        if ica_rows:
            _write_csv(ica_rows, out / "pos_ica_overlap.csv")
    t = lap("ICA overlap", t)
    timings["total"] = time.perf_counter() - started_all

    results = {
        "networks": netset, "networks_path": net_path, "tags": [tag_names[t] for t in net_tags], "data": data_rows,
        "tag_rows": tag_rows, "classifier": class_rows, "classifier_seeds": seed_rows, "lesion": lesion_rows,
        "ica_overlap": ica_rows, "ica_note": ica_note, "timings": timings, "skipped_tags": skipped_tags,
        "unaligned_words": n_unaligned, "figures": figures, "dropped_test_sentences": n_shared,
    }
    report_path = _write_report(out, cfg, netset, results)
    results["report"] = report_path
    log.info("pos: report %s", report_path)
    return results


def ica_overlap(cfg, lm: LoadedModel, netset: NetworkSet, fig_dir: Path) -> tuple[list[dict], str, Path | None]:
    """IoU of every POS network with every ICA network of ``fnet.analysis.networks_for_config(cfg, lm)`` (or of
    the saved NetworkSet ``analysis.ica_networks_file``, when set).
    Rows: per tag its best-matching ICA network and the IoU, plus the union of all tags. Never raises for a
    missing ICA step: the note says why it was skipped."""
    from fnet.networks import iou

    networks_file = cfg.analysis.ica_networks_file
    if networks_file:
        ica = NetworkSet.load(Path(str(networks_file)).expanduser())
    else:
        try:
            from fnet.analysis import networks_for_config
        except ImportError as err:
            note = (f"skipped: fnet.analysis.networks_for_config is not available ({err}); "
                    "set analysis.ica_overlap=false to turn this step off")
            log.warning("pos: ICA overlap %s", note)
            return [], note, None
        ica = networks_for_config(cfg, lm)
    if (ica.n_layers, ica.width) != (netset.n_layers, netset.width):
        note = (f"skipped: ICA networks are [{ica.n_layers}, {ica.width}] but POS networks are "
                f"[{netset.n_layers}, {netset.width}] (different signal?)")
        return [], note, None
    matrix = iou(netset, ica)  # [K_pos, K_ica]
    union = iou(netset.union().reshape(1, -1), ica)[0]  # [K_ica]
    ica_ids = ica.network_ids()
    rows = []
    tags = netset.provenance.get("tags", [str(k) for k in range(netset.n_networks)])
    for k, tag in enumerate(tags):
        best = int(torch.argmax(matrix[k])) if matrix.shape[1] else 0
        rows.append({"tag": tag, "neurons": int(netset.sizes()[k]), "best_ica_network": int(ica_ids[best]),
                     "ica_size": int(ica.sizes()[best]), "iou": float(matrix[k, best]) if matrix.shape[1] else 0.0,
                     "mean_iou": float(matrix[k].mean()) if matrix.shape[1] else 0.0})
    best = int(torch.argmax(union)) if union.numel() else 0
    rows.append({"tag": "(union of all tags)", "neurons": int(netset.union().sum()), "best_ica_network":
                 int(ica_ids[best]), "ica_size": int(ica.sizes()[best]), "iou": float(union[best]) if union.numel() else 0.0,
                 "mean_iou": float(union.mean()) if union.numel() else 0.0})
    from fnet.report import plot_iou_matrix

    figure = plot_iou_matrix(matrix, fig_dir / "pos_vs_ica_iou.png", xlabel="ICA network", ylabel="POS tag network",
                             title="IoU: POS key neurons vs ICA networks")
    note = f"{ica.n_networks} ICA networks ({ica.provenance.get('data', 'config data')})"
    return rows, note, figure


def _write_report(out: Path, cfg, netset: NetworkSet, results: dict) -> Path:
    from omegaconf import OmegaConf

    from fnet.report import markdown_table, provenance_header

    a = cfg.analysis
    lines = ["# POS key neurons", "", provenance_header(netset.provenance), ""]
    lines += ["## Options", "", "```yaml", OmegaConf.to_yaml(a).rstrip(), "```", ""]
    lines += ["## Data", "", markdown_table(results["data"]), "",
              f"Words without a token of their own (left out): {results['unaligned_words']} in the attribution set.",
              f"Test sentences dropped because they also occur verbatim in the train split: "
              f"{results['dropped_test_sentences']}.", ""]
    lines += ["## Key neurons per tag", "",
              f"Network `k` of `{results['networks_path'].name}` is the tag in row `k`. `samples`: attributed words "
              "of the tag; `mean_frequency`: mean fraction of the tag's samples that kept each key neuron; "
              "`mean_logprob`: the model's mean log-probability of the tag's words; `top_layers`: layers with the "
              "most key neurons.", "", markdown_table(results["tag_rows"]), ""]
    if results["skipped_tags"]:
        lines += [f"Tags with too few samples for a network (selection.min_samples): {results['skipped_tags']}", ""]
    for figure in results["figures"]:
        lines += [f"![{figure.stem}](figures/{figure.name})", ""]
    lines += ["## Classifier (UPOS of held-out words)", ""]
    if results["classifier"]:
        lines += ["Logistic regression on standardized activations; 95 % CI: bootstrap over test words (random: "
                  "mean and t-interval over seeds).", "",
                  markdown_table(results["classifier"], ["features", "n_neurons", "accuracy", "accuracy_lo",
                                                         "accuracy_hi", "macro_f1", "macro_f1_lo", "macro_f1_hi",
                                                         "seconds"]), ""]
        if results["classifier_seeds"]:
            lines += ["Random seeds:", "", markdown_table(results["classifier_seeds"]), ""]
    else:
        lines += ["(not run)", ""]
    lines += ["## Lesion (zero one tag's key neurons)", ""]
    if results["lesion"]:
        lines += ["Mean change of log p(word's first token) over the lesion words: `key_on_tag` on words of the "
                  "tag (95 % t-interval over words), `key_off_tag` on other words, `random_*` the same for per-layer "
                  "matched random masks (mean over seeds). `selective`: key on-tag < key off-tag and < random "
                  "on-tag.", "", markdown_table(results["lesion"]), "",
                  f"Selective for {sum(r['selective'] for r in results['lesion'])}/{len(results['lesion'])} tags.", ""]
    else:
        lines += ["(not run)", ""]
    lines += ["## Overlap with ICA functional networks", "", f"{results['ica_note']}", ""]
    if results["ica_overlap"]:
        lines += [markdown_table(results["ica_overlap"]), ""]
    lines += ["## Timings", "", markdown_table([{"stage": k, "seconds": v} for k, v in results["timings"].items()],
                                               floatfmt=".1f"), ""]
    path = out / "pos_report.md"
    path.write_text("\n".join(lines))
    return path
