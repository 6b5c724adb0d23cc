"""POS lesions: zeroing one tag's key neurons should lower the model's log-likelihood of that tag's words more than
other tags' words, and more than a per-layer matched random mask; and the key neurons as a NetworkSet.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fnet.attribution.keyneurons import KeyNeuronCounter
from fnet.attribution.methods import target_log_probs
from fnet.attribution.pos_align import AlignedSentence, WordSamples
from fnet.attribution.pos_probe import seed_interval
from fnet.batching import right_pad
from fnet.intervene import apply_mask, random_matched_mask
from fnet.models import LoadedModel
from fnet.networks import NetworkSet

__all__ = ["word_log_probs", "lesion_effects", "key_neuron_set"]


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
    # [layer, unit]`` zeroed (:func:`fnet.intervene.apply_mask`) at every position. One forward per sentence batch.

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
    mask
        [layer, unit] bool, neurons zeroed; default none.
    batch_size
        sentences per forward pass (default 8).

    Returns
    -------
    ndarray
        [n] float64 log-probabilities.
    """
    out = np.zeros(len(samples), dtype=np.float64)
    by_sentence: dict[int, list[int]] = {}
    for row, s in enumerate(samples.sentence):
        by_sentence.setdefault(int(s), []).append(row)
    sentences = sorted(by_sentence, key=lambda s: -len(aligned[s].input_ids))
    device = lm.device
    with apply_mask(lm.model, mask, signal=signal, spec=lm.arch):
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            input_ids, attention_mask = right_pad([aligned[s].input_ids for s in batch], lm.tokenizer.pad_token_id)
            logits = lm.model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            ).logits  # [batch, seq, vocab]
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

    Parameters
    ----------
    lm
        the model.
    aligned
        the aligned sentences.
    samples
        the words (indices into ``aligned``).
    key_masks
        [n_tags, layer, unit] bool, each tag's key neurons.
    tags
        the tag ids to lesion (a tag with no words, or only its words, is skipped).
    signal
        ``mlp_out`` | ``mlp_act``.
    random_seeds
        seeds of the matched random masks (default 0, 1).
    batch_size
        sentences per forward pass (default 8).
    progress
        show a progress bar (default False).

    Returns
    -------
    rows : list of dict
        one per lesioned tag.
    clean_log_probs : ndarray
        [n] float64, without a lesion.
    """
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
            "tag": samples.tag_names[t],
            "n_neurons": int(mask.sum()),
            "n_words_tag": int(on.sum()),
            "n_words_other": int((~on).sum()),
            "key_on_tag": mean_on,
            "key_on_tag_lo": lo_on,
            "key_on_tag_hi": hi_on,
            "key_off_tag": float(delta[~on].mean()),
        }
        if random_on:
            row.update(random_on_tag=float(np.mean(random_on)), random_off_tag=float(np.mean(random_off)))
        row["selectivity"] = row["key_on_tag"] - row["key_off_tag"]
        row["selective"] = bool(
            row["key_on_tag"] < row["key_off_tag"] and (not random_on or row["key_on_tag"] < row["random_on_tag"])
        )
        rows.append(row)
    return rows, clean


def _mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    return seed_interval(values, confidence)  # the same t-interval, over words


# --------------------------------------------------------------------------------------------------------------
# NetworkSet
# --------------------------------------------------------------------------------------------------------------
def key_neuron_set(
    counter: KeyNeuronCounter,
    top_k: int,
    n_layers: int,
    width: int,
    tag_names: Sequence[str],
    *,
    min_samples: int = 1,
    rule: str = "frequency",
    provenance: dict | None = None,
) -> tuple[NetworkSet, list[int]]:
    """One network per tag with at least ``min_samples`` samples: its ``top_k`` key neurons (selection ``rule``,
    see :meth:`KeyNeuronCounter.key_neurons`). ``maps`` hold the fraction of the tag's samples that kept each
    neuron. Returns ``(netset, tag ids of its networks)``.

    Parameters
    ----------
    counter
        the key-neuron counts.
    top_k
        key neurons per tag.
    n_layers
        layers.
    width
        units per layer.
    tag_names
        the tag vocabulary.
    min_samples
        fewest samples of a tag with a network (default 1).
    rule
        ``"frequency"`` (default) or ``"contrast"``.
    provenance
        stored with the networks, completed with the selection's settings.

    Returns
    -------
    netset : NetworkSet
        one network per kept tag.
    tags : list of int
        the tag id of each network.
    """
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
