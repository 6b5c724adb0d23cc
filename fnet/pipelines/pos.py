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
``pos_report.md``, ``pos_key_neurons.safetensors``, CSVs and figures under ``cfg.paths.output_dir``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fnet.attribution import (
    KeyNeuronCounter,
    align_sentences,
    attribute_samples,
    cap_per_tag,
    compare_classifiers,
    key_neuron_set,
    lesion_effects,
    mean_signal,
    n_top,
    record_word_features,
    word_samples,
)
from fnet.attribution.conllu import UPOS_TAGS, load_treebank
from fnet.attribution.pos_data import check_lesion_tags, drop_shared_sentences
from fnet.models import LoadedModel
from fnet.networks import NetworkSet, iou
from fnet.pipelines._common import networks_for_config
from fnet.provenance import provenance
from fnet.report import markdown_table, plot_counts_per_layer, plot_iou_matrix, plot_network_maps, provenance_header

log = logging.getLogger(__name__)

__all__ = ["run_pos_analysis", "ica_overlap"]


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

    figure = plot_iou_matrix(matrix, fig_dir / "pos_vs_ica_iou.png", xlabel="ICA network", ylabel="POS tag network",
                             title="IoU: POS key neurons vs ICA networks")
    note = f"{ica.n_networks} ICA networks ({ica.provenance.get('data', 'config data')})"
    return rows, note, figure


def _write_report(out: Path, cfg, netset: NetworkSet, results: dict) -> Path:


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
