"""POS key neurons found and probed: attribution per sample into a key-neuron counter, word features, and the
logistic-regression probe on key neurons vs matched random neurons, all neurons and the majority class (95 %
CIs by bootstrap over test words; random rows: mean and t-interval over seeds).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fnet.attribution.keyneurons import KeyNeuronCounter
from fnet.attribution.methods import attribute
from fnet.attribution.pos_align import AlignedSentence, WordSamples
from fnet.batching import right_pad
from fnet.intervene import random_matched_mask
from fnet.models import LoadedModel
from fnet.recording.recorder import Recorder

log = logging.getLogger(__name__)

__all__ = [
    "attribute_samples",
    "record_word_features",
    "mean_signal",
    "columns_of",
    "random_matched_columns",
    "bootstrap_metrics",
    "seed_interval",
    "compare_classifiers",
]


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

    Parameters
    ----------
    lm
        the model.
    aligned
        the aligned sentences.
    samples
        the words to attribute (indices into ``aligned``).
    counter
        updated in place with each sample's scores.
    signal
        ``mlp_out`` | ``mlp_act``.
    method
        ``act_x_grad`` (default) | ``ig``.
    steps, baseline, alpha_batch
        as in :func:`fnet.attribution.methods.attribute`.
    batch_size
        samples per attribution batch (default 16).
    positions
        ``"target"`` (default): the scores at the predicting position; ``"sum"``: summed over positions.
    progress
        show a progress bar (default False).

    Returns
    -------
    ndarray
        [n] float64 clean target log-probabilities.
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
            input_ids, attention_mask = right_pad(prefixes, pad_id)
            target_positions = torch.as_tensor([len(p) - 1 for p in prefixes])
            result = attribute(
                lm.model,
                input_ids,
                attention_mask,
                target_positions,
                targets,
                signal=signal,
                method=method,
                steps=steps,
                baseline=baseline,
                alpha_batch=alpha_batch,
                spec=lm.arch,
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
    predicts the word). Sentences are recorded once each with :class:`fnet.recording.recorder.Recorder`.

    Parameters
    ----------
    lm
        the model.
    aligned
        the aligned sentences.
    samples
        the words (indices into ``aligned``).
    signal
        ``mlp_out`` | ``mlp_act``.
    batch_size
        sentences per forward pass (default 8).
    position
        ``"word"`` (default) or ``"before"``.
    progress
        show a progress bar (default False).

    Returns
    -------
    ndarray
        [n_samples, n_layers * width] float32.
    """
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
    """Per-neuron mean of recorded activations, ``[layer, unit]`` (the IG ``mean`` baseline).

    Parameters
    ----------
    X
        [n_samples, n_layers * width] activations (layer-major columns).
    n_layers
        layers.
    width
        units per layer.

    Returns
    -------
    torch.Tensor
        [layer, unit] float32 means.
    """
    return torch.from_numpy(np.asarray(X, dtype=np.float64).mean(axis=0)).float().reshape(n_layers, width)


# --------------------------------------------------------------------------------------------------------------
# Classifier comparison
# --------------------------------------------------------------------------------------------------------------
def columns_of(mask: torch.Tensor) -> np.ndarray:
    """Flat layer-major column indices of a ``[layer, unit]`` bool mask.

    Parameters
    ----------
    mask
        [layer, unit] bool.

    Returns
    -------
    ndarray
        [n] int64 column indices of the True neurons.
    """
    return torch.nonzero(torch.as_tensor(mask).reshape(-1)).flatten().numpy()


def random_matched_columns(mask: torch.Tensor, seed: int) -> np.ndarray:
    """Columns of a random mask with the same number of neurons in every layer as ``mask`` (drawn from all the
    layer's units: the paper's unbiased "same number of random neurons" control).

    Parameters
    ----------
    mask
        [layer, unit] bool, the reference.
    seed
        seed of the draw.

    Returns
    -------
    ndarray
        [mask.sum()] int64 column indices.
    """

    return columns_of(random_matched_mask(torch.as_tensor(mask, dtype=torch.bool), seed=seed).mask)


def _macro_f1(labels):
    from sklearn.metrics import f1_score

    def statistic(y_true, y_pred):
        return f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)

    return statistic


def bootstrap_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    labels: Sequence[int] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy and macro-F1 (over ``labels``, default the test labels) with percentile bootstrap CIs over test
    words (``scipy.stats.bootstrap``, paired resampling of (true, predicted)).

    Parameters
    ----------
    y_true, y_pred
        [words] true and predicted tag ids.
    labels
        the labels macro-F1 averages over; default those of ``y_true``.
    n_resamples
        bootstrap resamples (default 1000); 0 gives no intervals.
    confidence
        level of the intervals (default 0.95).
    seed
        seed of the resampling (default 0).

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1`` and, with resamples and more than one word, their ``_lo``/``_hi`` bounds.
    """
    from scipy.stats import bootstrap

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true) if labels is None else np.asarray(labels)
    macro_f1 = _macro_f1(labels)
    out = {"accuracy": float((y_true == y_pred).mean()), "macro_f1": float(macro_f1(y_true, y_pred))}
    if n_resamples and len(y_true) > 1:
        rng = np.random.default_rng(seed)
        correct = (y_true == y_pred).astype(np.float64)
        acc = bootstrap(
            (correct,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=rng,
            vectorized=True,
        )
        f1 = bootstrap(
            (y_true, y_pred),
            macro_f1,
            paired=True,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=rng,
        )
        out.update(
            accuracy_lo=float(acc.confidence_interval.low),
            accuracy_hi=float(acc.confidence_interval.high),
            macro_f1_lo=float(f1.confidence_interval.low),
            macro_f1_hi=float(f1.confidence_interval.high),
        )
    return out


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval over seeds: ``(mean, low, high)``; one value gives a zero-width interval.

    Parameters
    ----------
    values
        one value per seed.
    confidence
        level of the interval (default 0.95).

    Returns
    -------
    tuple of float
        ``(mean, low, high)``.
    """
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

    Parameters
    ----------
    X_train, X_test
        [words, n_layers*width] activations (layer-major columns).
    y_train, y_test
        [words] tag ids.
    key_mask
        [layer, unit] bool, the neurons of the key-neuron classifier.
    random_seeds
        seeds of the matched random-neuron classifiers (default 0, 1, 2).
    all_neurons
        also fit a classifier on all neurons (default True).
    C, max_iter
        the logistic regression's inverse regularisation (default 1.0) and iteration limit (default 300).
    n_bootstrap
        bootstrap resamples of the test words (default 1000).
    seed
        seed of the classifiers and of the bootstrap (default 0).

    Returns
    -------
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
        rows.append(
            timed_row(
                "key neurons",
                key_columns,
                lambda: _fit_predict(X_train, y_train, X_test, key_columns, C=C, max_iter=max_iter, seed=seed),
            )
        )
    seed_rows = []
    for s in random_seeds:
        if not len(key_columns):
            break
        columns = random_matched_columns(key_mask, seed=int(s))
        started = time.perf_counter()
        y_pred = _fit_predict(X_train, y_train, X_test, columns, C=C, max_iter=max_iter, seed=seed)
        seed_rows.append(
            dict(
                seed=int(s),
                n_neurons=int(len(columns)),
                overlap_with_key=int(np.intersect1d(columns, key_columns).size),
                seconds=time.perf_counter() - started,
                **bootstrap_metrics(y_test, y_pred, labels=labels, n_resamples=0),
            )
        )
    if seed_rows:
        acc, acc_lo, acc_hi = seed_interval([r["accuracy"] for r in seed_rows])
        f1, f1_lo, f1_hi = seed_interval([r["macro_f1"] for r in seed_rows])
        rows.append(
            {
                "features": f"random matched ({len(seed_rows)} seeds)",
                "n_neurons": seed_rows[0]["n_neurons"],
                "accuracy": acc,
                "accuracy_lo": acc_lo,
                "accuracy_hi": acc_hi,
                "macro_f1": f1,
                "macro_f1_lo": f1_lo,
                "macro_f1_hi": f1_hi,
                "seconds": sum(r["seconds"] for r in seed_rows),
            }
        )
    if all_neurons:
        every = np.arange(X_train.shape[1])
        rows.append(
            timed_row(
                "all neurons",
                every,
                lambda: _fit_predict(X_train, y_train, X_test, every, C=C, max_iter=max_iter, seed=seed),
            )
        )
    majority = DummyClassifier(strategy="most_frequent").fit(X_train[:, :1], y_train)
    rows.append(timed_row("majority class", None, lambda: majority.predict(X_test[:, :1])))
    return rows, seed_rows
