"""POS key neurons: the neurons most important for predicting words of each part-of-speech tag.

Carries the method of Saki Norouzi, Masjedi & Hitzler (2025), "On the Analogy between Human Brain and LLMs:
Spotting Key Neurons in Grammar Perception" (no code released), onto fnet's signals for any registry model:

1. **Samples.** UD English-EWT sentences (:mod:`fnet.attribution.conllu`) are rebuilt as text and tokenized; each word's
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
5. **Lesion.** Zeroing one tag's key neurons (:func:`fnet.intervene.apply_mask`) should lower the model's
   log-likelihood of that tag's words more than other tags' words, and more than a per-layer matched random mask.
6. **ICA overlap.** IoU between the POS networks and the ICA functional networks of the same config
   (:func:`fnet.pipelines._common.networks_for_config`).

``run_pos_analysis(cfg)`` runs everything from the Hydra config (``python analyze.py analysis=pos``) and writes
``pos_report.md``, ``pos_key_neurons.safetensors``, CSVs and figures under ``cfg.paths.output_dir``. The data step
is :mod:`fnet.pipelines.pos_treebank`, the report :mod:`fnet.pipelines.pos_report`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from fnet.attribution import (
    KeyNeuronCounter,
    attribute_samples,
    compare_classifiers,
    key_neuron_set,
    lesion_effects,
    mean_signal,
    n_top,
    record_word_features,
)
from fnet.models import LoadedModel
from fnet.networks import NetworkSet, iou
from fnet.pipelines._common import networks_for_config
from fnet.pipelines.pos_report import write_report
from fnet.pipelines.pos_treebank import PosData, load_data
from fnet.provenance import provenance
from fnet.report import plot_counts_per_layer, plot_iou_matrix, plot_network_maps

log = logging.getLogger(__name__)

__all__ = ["run_pos_analysis", "ica_overlap"]


# --------------------------------------------------------------------------------------------------------------
# The analysis run: one step per line
# --------------------------------------------------------------------------------------------------------------
def run_pos_analysis(cfg) -> dict:
    """POS key neurons from the Hydra config (``analysis: pos``); see the module docstring and
    ``conf/analysis/pos.yaml`` for the options. Returns a dict of the results (tables as lists of rows)."""
    clock = _Laps()
    out = Path(cfg.paths.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    lm, max_length = _load_model(cfg)
    clock.lap("load model")
    data = load_data(cfg, lm.tokenizer, max_length)
    clock.lap("data + alignment")
    X_train, X_test = _classifier_features(cfg, lm, data)  # recorded first: the IG mean baseline is the train words'
    clock.lap("record classifier features")
    counter, target_lp = _attribute(cfg, lm, data, X_train)
    clock.lap(f"attribution ({cfg.analysis.attribution.method})")
    keys = _key_neurons(cfg, lm, data, counter, target_lp, out)
    clock.lap("key neurons + figures")
    class_rows, seed_rows = _classifier(cfg, data, X_train, X_test, keys.netset, out)
    del X_train, X_test
    clock.lap("classifier")
    lesion_rows = _lesion(cfg, lm, data, keys, out)
    clock.lap("lesion")
    ica_rows, ica_note, ica_figures = _ica_step(cfg, lm, keys.netset, out)
    clock.lap("ICA overlap")
    results = {
        "networks": keys.netset,
        "networks_path": keys.path,
        "tags": [data.tag_names[t] for t in keys.tags],
        "data": data.rows(),
        "tag_rows": keys.tag_rows,
        "classifier": class_rows,
        "classifier_seeds": seed_rows,
        "lesion": lesion_rows,
        "ica_overlap": ica_rows,
        "ica_note": ica_note,
        "timings": clock.total(),
        "skipped_tags": keys.skipped_tags,
        "unaligned_words": data.n_unaligned,
        "figures": keys.figures + ica_figures,
        "dropped_test_sentences": data.n_shared,
    }
    results["report"] = write_report(out, cfg, keys.netset, results)
    log.info("pos: report %s", results["report"])
    return results


class _Laps:
    """Seconds per step (``timings``), logged as each step ends; ``total`` since the start."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.started = self.since = time.perf_counter()

    def lap(self, name: str) -> None:
        self.timings[name] = time.perf_counter() - self.since
        log.info("pos: %s took %.1f s", name, self.timings[name])
        self.since = time.perf_counter()

    def total(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return self.timings


# --------------------------------------------------------------------------------------------------------------
# Model (the data step: fnet.pipelines.pos_treebank)
# --------------------------------------------------------------------------------------------------------------
def _load_model(cfg) -> tuple[LoadedModel, int]:
    """The model (``cfg.model``, or a LoadedModel in its place) and the sentence length in tokens:
    ``record.max_length``, cut to the model's context."""
    lm = instantiate(cfg.model) if not isinstance(cfg.model, LoadedModel) else cfg.model
    max_length = int(cfg.record.max_length)
    model_limit = _max_positions(lm)
    if model_limit is not None and model_limit < max_length:
        log.info(
            "pos: record.max_length=%d exceeds the model's %d positions; sentences are cut at %d tokens",
            max_length,
            model_limit,
            model_limit,
        )
        max_length = model_limit
    return lm, max_length


def _max_positions(lm: LoadedModel) -> int | None:
    """The model's context length from its config (``n_positions`` / ``max_position_embeddings`` / ``seq_length``),
    or None when the config does not say."""
    for key in ("n_positions", "max_position_embeddings", "seq_length"):
        value = getattr(lm.model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _sentence_batch(cfg) -> int:
    # sentences are short: batch more of them than record.batch_size (sized for 1024-token texts)
    return int(cfg.analysis.sentence_batch_size or cfg.record.batch_size)


# --------------------------------------------------------------------------------------------------------------
# Features, attribution and key neurons
# --------------------------------------------------------------------------------------------------------------
def _classifier_features(cfg, lm: LoadedModel, data: PosData) -> tuple[Any, Any]:
    """The activations the classifier reads for each train and test word (``analysis.classifier.position``)."""
    rec = dict(
        signal=str(cfg.record.signal),
        batch_size=_sentence_batch(cfg),
        position=str(cfg.analysis.classifier.position),
        progress=bool(cfg.analysis.progress),
    )
    return (
        record_word_features(lm, data.train.aligned, data.train.samples, **rec),
        record_word_features(lm, data.test.aligned, data.test.samples, **rec),
    )


def _attribute(cfg, lm: LoadedModel, data: PosData, X_train: Any) -> tuple[KeyNeuronCounter, Any]:
    """Attribute every attribution sample's word to the neurons and count each sample's top neurons per tag;
    returns the counter and the model's log-probability of each sample's word."""
    a = cfg.analysis
    signal = str(cfg.record.signal)
    n_layers, width = lm.n_layers, lm.width(signal)
    baseline_name = str(a.attribution.baseline)
    if baseline_name == "mean":
        baseline: Any = mean_signal(X_train, n_layers, width)
    elif baseline_name == "zero":
        baseline = "zero"
    else:
        raise ValueError(f"unknown attribution.baseline {baseline_name!r}; valid: 'zero', 'mean'")
    counter = KeyNeuronCounter(
        len(data.tag_names), n_layers * width, float(a.selection.top_fraction), str(a.selection.rank_by)
    )
    target_lp = attribute_samples(
        lm,
        data.attribution.aligned,
        data.attribution.samples,
        counter,
        signal=signal,
        method=str(a.attribution.method),
        steps=int(a.attribution.steps),
        baseline=baseline,
        alpha_batch=a.attribution.alpha_batch,
        batch_size=int(a.attribution.batch_size),
        positions=str(a.attribution.positions),
        progress=bool(a.progress),
    )
    return counter, target_lp


@dataclass
class _KeyNeurons:
    """The POS networks (one per tag with enough samples; ``tags``: their tag ids) and what was written of them."""

    netset: NetworkSet
    tags: list[int]
    path: Path
    tag_rows: list[dict]
    skipped_tags: list[str]
    figures: list[Path]


def _key_neurons(
    cfg, lm: LoadedModel, data: PosData, counter: KeyNeuronCounter, target_lp: Any, out: Path
) -> _KeyNeurons:
    """Select each tag's key neurons; save them (NetworkSet, counts, CSVs) and plot them."""
    a = cfg.analysis
    signal = str(cfg.record.signal)
    n_layers, width = lm.n_layers, lm.width(signal)
    method, top_fraction = str(a.attribution.method), float(a.selection.top_fraction)
    prov = provenance(
        model=lm.name,
        model_source=lm.source,
        signal=signal,
        seed=int(cfg.seed),
        data=f"UD English-EWT {data.attribution.split} ({len(data.attribution.sentences)} sentences, "
        f"{len(data.attribution.samples)} words)",
        method=method,
        steps=int(a.attribution.steps) if method == "ig" else 1,
        baseline=str(a.attribution.baseline),
        positions=str(a.attribution.positions),
        n_layers=n_layers,
        width=width,
        per_sample_kept=n_top(n_layers * width, top_fraction),
    )
    top_k, rule = int(a.selection.top_k), str(a.selection.rule)
    netset, net_tags = key_neuron_set(
        counter,
        top_k,
        n_layers,
        width,
        data.tag_names,
        rule=rule,
        min_samples=int(a.selection.min_samples),
        provenance=prov,
    )
    path = netset.save(out / "pos_key_neurons.safetensors")
    counter.save(out / "pos_selection_counts.safetensors", data.tag_names)  # re-select without attributing again
    _write_csv(_key_neuron_rows(counter, net_tags, data.tag_names, top_k, rule, width), out / "pos_key_neurons.csv")
    tag_rows = _tag_rows(counter, netset, net_tags, data, target_lp)
    skipped_tags = [
        data.tag_names[t] for t in range(len(data.tag_names)) if t not in net_tags and int(counter.n_samples[t]) > 0
    ]
    _write_csv(tag_rows, out / "pos_tags.csv")
    figures = []
    if netset.n_networks:
        fig_dir = out / "figures"
        figures.append(plot_network_maps(netset, fig_dir / "pos_key_neurons_maps.png", ncols=4))
        figures.append(plot_counts_per_layer(netset, fig_dir / "pos_key_neurons_per_layer.png", kind="heatmap"))
    return _KeyNeurons(netset, net_tags, path, tag_rows, skipped_tags, figures)


def _key_neuron_rows(
    counter: KeyNeuronCounter, net_tags: list[int], tag_names: list[str], top_k: int, rule: str, width: int
) -> list[dict]:
    """One row per (tag, rank): the neuron's layer and unit, how often it was kept, its contrast and mean score."""
    frequency, mean_score = counter.frequency(), counter.mean_score()
    chosen_neurons, contrast = counter.key_neurons(top_k, rule), counter.contrast()
    return [
        {
            "tag": tag_names[tag],
            "rank": rank,
            "layer": neuron // width,
            "unit": neuron % width,
            "count": int(counter.counts[tag, neuron]),
            "frequency": float(frequency[tag, neuron]),
            "contrast": float(contrast[tag, neuron]),
            "mean_score": float(mean_score[tag, neuron]),
        }
        for tag in net_tags
        for rank, neuron in enumerate(chosen_neurons[tag].tolist())
    ]


def _tag_rows(
    counter: KeyNeuronCounter, netset: NetworkSet, net_tags: list[int], data: PosData, target_lp: Any
) -> list[dict]:
    """One row per POS network: its tag, samples, size, mean keep-frequency, mean log-prob and top layers."""
    frequency = counter.frequency()
    counts_layer = netset.counts_per_layer()  # [K, layer]
    rows = []
    for k, tag in enumerate(net_tags):
        rows.append(
            {
                "network": k,
                "tag": data.tag_names[tag],
                "samples": int(counter.n_samples[tag]),
                "neurons": int(netset.sizes()[k]),
                "mean_frequency": float(frequency[tag][netset.flat()[k]].mean()) if int(netset.sizes()[k]) else 0.0,
                "mean_logprob": float(target_lp[data.attribution.samples.tag == tag].mean()),
                "top_layers": ",".join(str(int(x)) for x in torch.argsort(counts_layer[k], descending=True)[:3]),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------------------
# Classifier, lesion, ICA overlap
# --------------------------------------------------------------------------------------------------------------
def _classifier(
    cfg, data: PosData, X_train: Any, X_test: Any, netset: NetworkSet, out: Path
) -> tuple[list[dict], list[dict]]:
    """UPOS of held-out words from the union of the key neurons, against matched random neurons, all neurons and
    the majority class (:func:`fnet.attribution.compare_classifiers`)."""
    c = cfg.analysis.classifier
    if not (len(data.train.samples) and len(data.test.samples) and netset.n_networks):
        return [], []
    class_rows, seed_rows = compare_classifiers(
        X_train,
        data.train.samples.tag,
        X_test,
        data.test.samples.tag,
        netset.union(),  # union: [layer, unit]
        random_seeds=list(c.random_seeds),
        all_neurons=bool(c.all_neurons),
        C=float(c.C),
        max_iter=int(c.max_iter),
        n_bootstrap=int(c.bootstrap),
        seed=int(cfg.seed),
    )
    _write_csv(class_rows, out / "pos_classifier.csv")
    _write_csv(seed_rows, out / "pos_classifier_seeds.csv")
    return class_rows, seed_rows


def _lesion(cfg, lm: LoadedModel, data: PosData, keys: _KeyNeurons, out: Path) -> list[dict]:
    """Zero each chosen tag's key neurons (``analysis.lesion.tags``, with at least ``min_words`` lesion words) and
    measure the change of its words' log-likelihood against other words and matched random masks."""
    a = cfg.analysis.lesion
    samples, netset, net_tags = data.lesion.samples, keys.netset, keys.tags
    if not (bool(a.enabled) and netset.n_networks and len(samples)):
        return []
    wanted = a.tags
    chosen = [k for k, tag in enumerate(net_tags) if wanted is None or data.tag_names[tag] in list(wanted)]
    chosen = [k for k in chosen if int((samples.tag == net_tags[k]).sum()) >= int(a.min_words)]
    masks_by_tag = torch.zeros(len(data.tag_names), netset.n_layers, netset.width, dtype=torch.bool)
    for k, tag in enumerate(net_tags):  # lesion_effects indexes masks by tag id
        masks_by_tag[tag] = netset.masks[k]
    lesion_rows, _ = lesion_effects(
        lm,
        data.lesion.aligned,
        samples,
        masks_by_tag,
        [net_tags[k] for k in chosen],
        signal=str(cfg.record.signal),
        random_seeds=list(a.random_seeds),
        batch_size=_sentence_batch(cfg),
        progress=bool(cfg.analysis.progress),
    )
    _write_csv(lesion_rows, out / "pos_lesion.csv")
    return lesion_rows


def _ica_step(cfg, lm: LoadedModel, netset: NetworkSet, out: Path) -> tuple[list[dict], str, list[Path]]:
    """:func:`ica_overlap` when ``analysis.ica_overlap`` is on: its rows (also as CSV), note and figure."""
    if not (bool(cfg.analysis.ica_overlap) and netset.n_networks):
        return [], "skipped (analysis.ica_overlap=false)", []
    rows, note, figure = ica_overlap(cfg, lm, netset, out / "figures")
    if rows:
        _write_csv(rows, out / "pos_ica_overlap.csv")
    return rows, note, [figure] if figure is not None else []


def ica_overlap(cfg, lm: LoadedModel, netset: NetworkSet, fig_dir: Path) -> tuple[list[dict], str, Path | None]:
    """IoU of every POS network with every ICA network of ``fnet.pipelines._common.networks_for_config(cfg, lm)`` (or of
    the saved NetworkSet ``analysis.ica_networks_file``, when set).
    Rows: per tag its best-matching ICA network and the IoU, plus the union of all tags. Never raises for a
    missing ICA step: the note says why it was skipped."""
    networks_file = cfg.analysis.ica_networks_file
    if networks_file:
        ica = NetworkSet.load(Path(str(networks_file)).expanduser())
    else:
        ica = networks_for_config(cfg, lm)
    if (ica.n_layers, ica.width) != (netset.n_layers, netset.width):
        note = (
            f"skipped: ICA networks are [{ica.n_layers}, {ica.width}] but POS networks are "
            f"[{netset.n_layers}, {netset.width}] (different signal?)"
        )
        return [], note, None
    matrix = iou(netset, ica)  # [K_pos, K_ica]
    union = iou(netset.union().reshape(1, -1), ica)[0]  # [K_ica]
    ica_ids = ica.network_ids()
    rows = []
    tags = netset.provenance.get("tags", [str(k) for k in range(netset.n_networks)])
    for k, tag in enumerate(tags):
        best = int(torch.argmax(matrix[k])) if matrix.shape[1] else 0
        rows.append(
            {
                "tag": tag,
                "neurons": int(netset.sizes()[k]),
                "best_ica_network": int(ica_ids[best]),
                "ica_size": int(ica.sizes()[best]),
                "iou": float(matrix[k, best]) if matrix.shape[1] else 0.0,
                "mean_iou": float(matrix[k].mean()) if matrix.shape[1] else 0.0,
            }
        )
    best = int(torch.argmax(union)) if union.numel() else 0
    rows.append(
        {
            "tag": "(union of all tags)",
            "neurons": int(netset.union().sum()),
            "best_ica_network": int(ica_ids[best]),
            "ica_size": int(ica.sizes()[best]),
            "iou": float(union[best]) if union.numel() else 0.0,
            "mean_iou": float(union.mean()) if union.numel() else 0.0,
        }
    )

    figure = plot_iou_matrix(
        matrix,
        fig_dir / "pos_vs_ica_iou.png",
        xlabel="ICA network",
        ylabel="POS tag network",
        title="IoU: POS key neurons vs ICA networks",
    )
    note = f"{ica.n_networks} ICA networks ({ica.provenance.get('data', 'config data')})"
    return rows, note, figure


def _write_csv(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path
