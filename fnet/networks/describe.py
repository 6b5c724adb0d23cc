"""What each network responds to: the tokens and texts that drive its component, its layers, units and size.

A network is a thresholded spatial map; its component also has a *time course*, the decomposition's source
over the recorded tokens (``transform`` of the fitted estimator: ``sources  # [tokens, K]``, kept per text by
:func:`fnet.networks.group_networks` / :func:`~fnet.networks.individual_networks` with ``keep_sources=True``).
ICA leaves each component's sign arbitrary; the network's map was oriented by ``NetworkSet.signs`` (its heavy
tail made positive), and :func:`orient` turns the time courses the same way, so "fires" means "drives the
network's neurons in the direction its map points". Time courses are then z-scored over all tokens given, so a
value reads as standard deviations of that component's activity.

* :func:`token_strings` -- each recorded text's tokens as strings, row for row with its activations;
* :func:`orient` -- time courses in the maps' orientation, z-scored;
* :func:`top_examples` -- the tokens where a component is highest, each with its context and every context
  token's value;
* :func:`top_texts` -- the texts where it is highest on average;
* :func:`describe` -- all of the above per network, with its size, layers, top units and massive units, as
  JSON-able dicts (what ``analyze.py`` writes to ``networks/descriptions.json`` and its explorer shows).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fnet.networks.netset import NetworkSet
from fnet.recording import tokenize_texts

__all__ = ["token_strings", "orient", "top_examples", "top_texts", "top_units", "describe"]


def token_strings(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[str]]:
    """Each text's tokens as strings, exactly the rows the recorder stored (same tokenisation and truncation).

    Parameters
    ----------
    tokenizer
        The model's tokenizer (``LoadedModel.tokenizer``).
    texts : sequence of str
        The recorded texts.
    max_length : int
        The recording's token limit (an ActivationStore's ``manifest["max_length"]``, already capped at the
        model's positions).

    Returns
    -------
    list of list of str
        ``tokens[i][t]`` is the text of token ``t`` of text ``i`` (``tokenizer.decode`` of that one id).
    """
    ids = tokenize_texts(tokenizer, list(texts), int(max_length))
    return [[tokenizer.decode([int(i)]) for i in row] for row in ids]


def orient(sources: Sequence[Any], signs: Any = None) -> list[np.ndarray]:
    """Time courses in the orientation of the networks' maps, z-scored over all tokens of all texts.

    Parameters
    ----------
    sources : sequence of array
        One ``[tokens_i, K]`` array per text (the estimator's ``transform``).
    signs : array [K] of +1 / -1, optional
        ``NetworkSet.signs`` (None: as fitted).

    Returns
    -------
    list of numpy.ndarray
        ``[tokens_i, K]`` float32 per text: ``signs * (s - mean) / std``, mean and std of each component over
        every token (a constant component gives zeros).
    """
    parts = [np.asarray(s, dtype=np.float64) for s in sources]
    if not parts:
        return []
    stacked = np.concatenate(parts, axis=0)  # [tokens, K]
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    factor = np.ones(stacked.shape[1]) if signs is None else np.asarray(signs, dtype=np.float64).reshape(-1)
    if factor.shape[0] != stacked.shape[1]:
        raise ValueError(f"{factor.shape[0]} signs for {stacked.shape[1]} components")
    factor = np.divide(factor, std, out=np.zeros_like(std), where=std > 0)
    return [((p - mean) * factor).astype(np.float32) for p in parts]


def _ids(text_ids: Sequence[str] | None, n: int) -> list[str]:
    ids = [f"text{i}" for i in range(n)] if text_ids is None else [str(t) for t in text_ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} text ids for {n} texts")
    return ids


def top_examples(
    courses: Sequence[np.ndarray],
    tokens: Sequence[Sequence[str]],
    component: int,
    *,
    n: int = 8,
    before: int = 8,
    after: int = 3,
    text_ids: Sequence[str] | None = None,
) -> list[dict]:
    """The ``n`` tokens where ``component`` is highest, each with its context.

    Parameters
    ----------
    courses : sequence of array
        Oriented time courses, ``[tokens_i, K]`` per text (:func:`orient`).
    tokens : sequence of sequence of str
        Token strings per text, ``len(tokens[i]) == courses[i].shape[0]`` (:func:`token_strings`).
    component : int
        Column of ``courses``.
    n, before, after : int
        How many tokens; context tokens kept before and after each.
    text_ids : sequence of str, optional
        The texts' ids (default ``text0``, ``text1``, ...).

    Returns
    -------
    list of dict
        By descending value: ``text`` (id), ``position`` (token index in the text), ``token``, ``value``, and
        ``context``: ``[[token, value], ...]`` from ``position - before`` to ``position + after``, with ``focus``
        the index of the token itself in ``context``.
    """
    ids = _ids(text_ids, len(courses))
    if len(tokens) != len(courses):
        raise ValueError(f"{len(tokens)} token lists for {len(courses)} texts")
    for i, (c, t) in enumerate(zip(courses, tokens)):
        if len(t) != c.shape[0]:
            raise ValueError(f"text {ids[i]}: {len(t)} tokens but {c.shape[0]} rows of time courses")
    if not courses:
        return []
    values = np.concatenate([np.asarray(c)[:, component] for c in courses])  # [tokens]
    owner = np.concatenate([np.full(c.shape[0], i) for i, c in enumerate(courses)])
    offset = np.concatenate([np.arange(c.shape[0]) for c in courses])
    out = []
    for flat in np.argsort(-values, kind="stable")[:n]:
        i, pos = int(owner[flat]), int(offset[flat])
        lo, hi = max(0, pos - before), min(len(tokens[i]), pos + after + 1)
        column = np.asarray(courses[i])[:, component]
        out.append(
            {
                "text": ids[i],
                "position": pos,
                "token": tokens[i][pos],
                "value": round(float(values[flat]), 3),
                "context": [[tokens[i][t], round(float(column[t]), 2)] for t in range(lo, hi)],
                "focus": pos - lo,
            }
        )
    return out


def top_texts(
    courses: Sequence[np.ndarray], component: int, *, n: int = 5, text_ids: Sequence[str] | None = None
) -> list[dict]:
    """The ``n`` texts where ``component`` is highest on average.

    Parameters
    ----------
    courses : sequence of ndarray
        Each text's oriented, z-scored time courses ``[tokens_i, K]``.
    component : int
        The component (network) to rank texts by.
    n : int
        Texts returned (default 5).
    text_ids : sequence of str, optional
        The texts' ids (default ``text0``, ``text1``, ...).

    Returns
    -------
    list of dict
        By descending mean: ``text``, ``mean`` and ``peak`` (of the oriented, z-scored time course over its
        tokens), ``peak_position``, ``n_tokens``.
    """
    ids = _ids(text_ids, len(courses))
    rows = []
    for text, c in zip(ids, courses):
        column = np.asarray(c)[:, component]
        if column.size:
            rows.append(
                {
                    "text": text,
                    "mean": round(float(column.mean()), 3),
                    "peak": round(float(column.max()), 3),
                    "peak_position": int(column.argmax()),
                    "n_tokens": int(column.size),
                }
            )
    return sorted(rows, key=lambda r: -r["mean"])[:n]


def top_units(nets: NetworkSet, k: int, n: int = 10, scale: Any = None) -> list[dict]:
    """Network ``k``'s ``n`` strongest neurons: by oriented z-map value when the set has maps, else layer-major.

    Parameters
    ----------
    nets : NetworkSet
        The networks (with their z-maps, when they have them).
    k : int
        The network.
    n : int
        Neurons returned (default 10).
    scale : array-like, optional
        ``[layer, unit]`` RMS activation of each neuron, reported beside it.

    Returns
    -------
    list of dict
        ``layer``, ``unit``, ``z`` (None without maps) and, with ``scale  # [layer, unit]``, the neuron's RMS
        activation ``scale``.
    """
    members = nets.neurons(k).numpy()  # [m, 2] (layer, unit)
    if nets.maps is not None:
        z = nets.maps[k].numpy()[members[:, 0], members[:, 1]]
        members = members[np.argsort(-z, kind="stable")]
    rows = []
    for layer, unit in members[:n]:
        row = {
            "layer": int(layer),
            "unit": int(unit),
            "z": None if nets.maps is None else round(float(nets.maps[k, layer, unit]), 2),
        }
        if scale is not None:
            row["scale"] = round(float(np.asarray(scale)[layer, unit]), 4)
        rows.append(row)
    return rows


def describe(
    nets: NetworkSet,
    sources: Sequence[Any] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    *,
    text_ids: Sequence[str] | None = None,
    scale: Any = None,
    massive: Sequence[int] = (),
    n_examples: int = 8,
    n_texts: int = 5,
    n_units: int = 10,
    before: int = 8,
    after: int = 3,
) -> list[dict]:
    """Each network of ``nets``: what drives its component, where it sits, how large it is.

    Parameters
    ----------
    nets : NetworkSet
        The networks (their ``signs`` orient the time courses; ``maps`` rank the units).
    sources : sequence of array, optional
        The decomposition's time courses, ``[tokens_i, K]`` per text, as fitted (``Decomposition.sources``).
        Without them (or ``tokens``) the descriptions have no examples and no texts.
    tokens : sequence of sequence of str, optional
        Token strings per text (:func:`token_strings`).
    text_ids : sequence of str, optional
        The texts' ids.
    scale : array [layer, unit], optional
        Every neuron's RMS activation (:func:`fnet.intervene.controls.neuron_scale`), shown beside top units.
    massive : sequence of int
        The massive units of the set (:func:`fnet.intervene.controls.massive_units`): which of them each network
        holds, and in which layers.
    n_examples, n_texts, n_units : int
        Top tokens (:func:`top_examples`), texts (:func:`top_texts`) and units (:func:`top_units`) kept.
    before, after : int
        Context of each top token.

    Returns
    -------
    list of dict
        One per network: ``network`` (its index in the original set), ``size``, ``fraction`` (of all neurons),
        ``stability`` (or None), ``counts_per_layer``, ``layers`` (the layers it has neurons in), ``top_units``,
        ``massive`` (``[{"unit", "layers"}]``), ``massive_share`` (share of its neurons on massive units),
        ``examples`` and ``texts``.

    Examples
    --------
    Two networks over 2 layers x 8 units; network 0's map has its heavy tail on the negative side, so its sign
    is -1, and its component fires *negatively* on "cat": oriented, "cat" is where it is highest.

    >>> import numpy as np, torch
    >>> maps = torch.linspace(-0.5, 0.5, 16).repeat(2, 1)      # [K, n_layers * width]
    >>> maps[0, [3, 11]] = -9.0; maps[1, 5] = 9.0
    >>> nets = NetworkSet.from_maps(maps, n_layers=2, width=8, alpha=2.0)
    >>> nets.signs.tolist(), nets.neurons(0).tolist()
    ([-1, 1], [[0, 3], [1, 3]])
    >>> tokens = [["the", "cat", "sat", "on", "the", "mat"], ["a", "cat", "ran"]]
    >>> rng = np.random.default_rng(0)
    >>> sources = [0.1 * rng.normal(size=(len(t), 2)) for t in tokens]   # [tokens_i, K]
    >>> sources[0][1, 0] = sources[1][1, 0] = -5.0                       # component 0 on "cat"
    >>> d = describe(nets, sources, tokens, text_ids=["t0", "t1"], massive=[3], n_examples=2, before=1, after=1)
    >>> [(e["text"], e["token"]) for e in d[0]["examples"]]
    [('t0', 'cat'), ('t1', 'cat')]
    >>> [tok for tok, value in d[0]["examples"][0]["context"]], d[0]["examples"][0]["focus"]
    (['the', 'cat', 'sat'], 1)
    >>> d[0]["size"], d[0]["counts_per_layer"], d[0]["massive"], d[0]["massive_share"]
    (2, [1, 1], [{'unit': 3, 'layers': [0, 1]}], 1.0)
    >>> d[1]["massive"], [e["token"] for e in d[1]["examples"]] != ["cat", "cat"]
    ([], True)
    """
    courses = None
    if sources is not None and tokens is not None:
        courses = orient(sources, None if nets.signs is None else nets.signs.numpy())
    ids = nets.network_ids()
    sizes, counts, fractions = nets.sizes(), nets.counts_per_layer(), nets.fractions()  # once, not per network
    massive = [int(u) for u in massive]
    out = []
    for k in range(len(nets)):
        size = int(sizes[k])
        held = [{"unit": u, "layers": np.flatnonzero(nets.masks[k, :, u].numpy()).tolist()} for u in massive]
        held = [m for m in held if m["layers"]]
        on_massive = sum(len(m["layers"]) for m in held)
        desc = {
            "network": int(ids[k]),
            "size": size,
            "fraction": float(fractions[k]),
            "stability": None if nets.stability is None else round(float(nets.stability[k]), 4),
            "counts_per_layer": counts[k].tolist(),
            "layers": np.flatnonzero(counts[k].numpy()).tolist(),
            "top_units": top_units(nets, k, n_units, scale),
            "massive": held,
            "massive_share": round(on_massive / size, 4) if size else 0.0,
            "examples": [],
            "texts": [],
        }
        if courses is not None:
            desc["examples"] = top_examples(
                courses, tokens, k, n=n_examples, before=before, after=after, text_ids=text_ids
            )
            desc["texts"] = top_texts(courses, k, n=n_texts, text_ids=text_ids) if n_texts else []
        out.append(desc)
    return out
