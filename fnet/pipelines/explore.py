"""``analyze.py``'s explorer: what each network responds to, as ``networks/descriptions.json``, ``explorer.html``
and, with a W&B logger, a ``wandb.Table`` of the cards and the page as an artifact.

:func:`describe_analysis` turns the analysis' decompositions into descriptions (:func:`fnet.networks.describe`):
each group network's top tokens in context and the texts that drive it most, over the template texts it was
fitted on, and the same per text for the individual decompositions; its layers, top units and the massive units
it holds (:func:`fnet.intervene.controls.massive_units` over the neurons' RMS on the template texts).
:func:`analysis_page` lays them out for :func:`fnet.report.explorer.render_explorer`; :func:`log_explorer` sends
the cards and the page to W&B.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from fnet.cache import atomic_write_text
from fnet.intervene.controls import massive_units, neuron_scale
from fnet.models import LoadedModel
from fnet.networks import NetworkSet, describe, token_strings
from fnet.recording import ActivationStore, slug
from fnet.report import plot_network_maps
from fnet.report.explorer import image_data_uri, network_card, render_explorer

log = logging.getLogger(__name__)

__all__ = ["MASSIVE", "describe_analysis", "analysis_page", "write_analysis_explorer", "log_explorer"]

#: massive units of a network set: among the ``top_k`` largest-RMS units of every layer, the ``n_units`` most
#: frequent across its networks (the defaults of ``conf/mask/_base.yaml``, which the study's controls use)
MASSIVE = {"top_k": 4, "n_units": 4}


def _tokens(lm: LoadedModel, stimuli: Mapping[str, Any], stores: Mapping[str, ActivationStore]) -> dict:
    """Text id -> its token strings, row for row with its recorded activations."""
    out = {}
    for name, stim in stimuli.items():
        texts = list(stim.template) + list(stim.individual)
        store = stores[name]
        strings = token_strings(lm.tokenizer, [t.text for t in texts], int(store.manifest["max_length"]))
        for text, row, n in zip(texts, strings, store.n_tokens([t.id for t in texts])):
            if len(row) != n:
                raise ValueError(
                    f"text {text.id}: {len(row)} tokens, but {n} were recorded; the tokenizer differs "
                    f"from the recording's"
                )
            out[text.id] = row
    return out


def describe_analysis(
    lm: LoadedModel,
    stimuli: Mapping[str, Any],
    stores: Mapping[str, ActivationStore],
    results: Mapping[str, dict],
    combined: Any,
    *,
    n_examples: int = 8,
) -> dict:
    """Descriptions of every network of the analysis (what ``networks/descriptions.json`` holds).

    Parameters
    ----------
    lm, stimuli, stores
        The model, the data sets (name -> StimulusSet) and their recorded activations.
    results : dict
        Per data set ``{"group": Decomposition, "individuals": [Decomposition]}``, fitted with
        ``keep_sources=True``.
    combined : Decomposition
        The group decomposition over every data set's template texts (``all``).

    Returns
    -------
    dict
        ``model``, ``signal``, ``n_layers``, ``width``, ``massive`` (its settings) and ``sets``: ``all`` and each
        data set -> ``{"level", "texts", "massive_units", "networks": [description]}``, a data set's with
        ``individual``: text id -> the descriptions of that text's own networks.
    """
    tokens = _tokens(lm, stimuli, stores)
    template_ids = {name: [t.id for t in stim.template] for name, stim in stimuli.items()}
    scale = neuron_scale([a for name in stimuli for a in stores[name].arrays(template_ids[name])], lm.n_layers)

    def entry(decomposition, ids: list[str]) -> dict:
        nets = decomposition.networks
        units = massive_units(
            nets.masks.numpy(), scale, top_k=min(MASSIVE["top_k"], nets.width), n_units=MASSIVE["n_units"]
        )
        return {
            "level": "group",
            "texts": ids,
            "massive_units": units,
            "networks": describe(
                nets,
                decomposition.sources,
                [tokens[i] for i in ids],
                text_ids=ids,
                scale=scale,
                massive=units,
                n_examples=n_examples,
            ),
        }

    sets = {"all": entry(combined, [i for ids in template_ids.values() for i in ids])}
    for name, res in results.items():
        sets[name] = entry(res["group"], template_ids[name])
        sets[name]["individual"] = {
            ind.name: describe(
                ind.networks,
                ind.sources,
                [tokens[ind.name]],
                text_ids=[ind.name],
                scale=scale,
                massive=sets[name]["massive_units"],
                n_examples=3,
                n_texts=0,
                n_units=3,
            )
            for ind in res["individuals"]
        }
    return {
        "model": lm.name,
        "signal": stores[next(iter(stores))].signal,
        "n_layers": lm.n_layers,
        "width": int(scale.shape[1]),
        "massive": dict(MASSIVE),
        "sets": sets,
    }


def _matches(match: Any, individuals: list, threshold: float, top: int = 8) -> dict[int, list[dict]]:
    """Template index -> the individual networks with IoU > ``threshold``, best first."""
    if match is None:
        return {}
    columns = [(ind.name, k) for ind in individuals for k in range(len(ind.networks))]
    iou = np.asarray(match.iou)  # [K_templates, individual networks]
    out = {}
    for t in range(iou.shape[0]):
        best = [j for j in np.argsort(-iou[t], kind="stable") if iou[t, j] > threshold][:top]
        out[t] = [{"text": columns[j][0], "network": columns[j][1], "iou": float(iou[t, j])} for j in best]
    return out


def _context(example: dict) -> str:
    """A top context as one line of text, the driving token in brackets."""
    return "".join(f"[{tok}]" if i == example["focus"] else tok for i, (tok, _) in enumerate(example["context"]))


def _individual_rows(individual: dict, match: Any, individuals: list) -> list[dict]:
    best = {}
    if match is not None:
        iou = np.asarray(match.iou)  # [K_templates, individual networks]
        j = 0
        for ind in individuals:
            for k in range(len(ind.networks)):
                t = int(iou[:, j].argmax()) if iou.shape[0] else 0
                best[(ind.name, k)] = (t, float(iou[t, j]) if iou.shape[0] else 0.0)
                j += 1
    rows = []
    for text, descs in individual.items():
        for d in descs:
            t, value = best.get((text, d["network"]), (None, None))
            rows.append(
                {
                    "text": text,
                    "network": d["network"],
                    "neurons": d["size"],
                    "layers": ", ".join(map(str, d["layers"][-4:])) + (" …" if len(d["layers"]) > 4 else ""),
                    "top tokens": " · ".join(repr(e["token"]) for e in d["examples"]),
                    "best template": t,
                    "IoU": value,
                }
            )
    return rows


def analysis_page(
    cfg: DictConfig, lm: LoadedModel, results: Mapping[str, dict], combined: Any, described: dict, fig_dir: Path
) -> dict:
    """The explorer page of an analysis (:mod:`fnet.report.explorer`): the decompositions' table, then one
    section per network set (``all`` first) with a card per network, and each data set's individual networks."""
    width, threshold = described["width"], float(cfg.networks.match_threshold)
    conv = _decomposition_rows(results, combined)
    sets = [
        _set_section(name, entry, results.get(name, {}), width, threshold, fig_dir)
        for name, entry in described["sets"].items()
    ]
    return {
        "title": f"fnet analysis: {lm.name}",
        "meta": _page_meta(cfg, lm, combined, width, threshold),
        "subtitle": "What each functional network responds to: its top tokens in context, the texts that "
        "drive it, where it sits (layers, units) and the massive units it holds.",
        "tables": [{"id": "decompositions", "title": "Group decompositions", "rows": conv}],
        "sets": sets,
    }


def _decomposition_rows(results: Mapping[str, dict], combined: Any) -> list[dict]:
    """One row per group decomposition (``all`` first): tokens, iterations, convergence, mean size and
    stability of its networks."""
    return [
        {
            "networks": name,
            "tokens": r["group"].n_tokens,
            "iterations": r["group"].n_iter,
            "converged": r["group"].converged,
            "mean size": float(r["group"].networks.sizes().double().mean()),
            "mean stability": (
                None if r["group"].networks.stability is None else float(r["group"].networks.stability.double().mean())
            ),
        }
        for name, r in [("all", {"group": combined}), *results.items()]
    ]


def _set_section(name: str, entry: dict, res: Mapping[str, Any], width: int, threshold: float, fig_dir: Path) -> dict:
    """The page section of one network set: a card per network (with its matching individual networks), the
    template x individual IoU figure, and the set's individual networks as a collapsed table."""
    matches = _matches(res.get("match"), res.get("individuals") or [], threshold)
    units = entry["massive_units"]
    cards = [
        network_card(d, set_id=name, width=width, matches=matches.get(i, ()), massive_units=units)
        for i, d in enumerate(entry["networks"])
    ]
    note = f"Group ICA over the {len(entry['texts'])} template texts of " + (
        "every data set, stacked: the networks evaluate.py lesions by default (networks/all_group.safetensors)."
        if name == "all"
        else f"{name} (networks/{name}_group.safetensors)."
    )
    figures = []
    iou_png = image_data_uri(fig_dir / f"{name}_template_individual_iou.png")
    if iou_png:
        figures.append(
            {
                "title": f"{name}: template x individual IoU",
                "src": iou_png,
                "caption": f"a template matches an individual network when their IoU > {threshold}",
            }
        )
    after = []
    if entry.get("individual"):
        after.append(
            {
                "id": f"{slug(name)}-individual",
                "collapsed": True,
                "title": f"{name}: individual networks ({len(entry['individual'])} texts, each "
                "decomposed alone; top tokens within its own text)",
                "rows": _individual_rows(entry["individual"], res.get("match"), res.get("individuals")),
            }
        )
    return {
        "id": slug(name),
        "title": "all data sets" if name == "all" else name,
        "note": note,
        "figures": figures,
        "cards": cards,
        "after": after,
    }


def _page_meta(cfg: DictConfig, lm: LoadedModel, combined: Any, width: int, threshold: float) -> list[tuple]:
    """The page's header lines: model, signal, decomposition, network rule, massive units, code version."""
    prov = combined.networks.provenance
    return [
        ("model", f"{lm.name} ({prov.get('model_fingerprint', '')[:12]})"),
        ("signal", f"{cfg.record.signal}: {lm.n_layers} layers x {width} units"),
        ("decomposition", f"{cfg.ica['_target_']}, K = {int(cfg.ica.n_components)}"),
        (
            "networks",
            f"z-maps thresholded by rule {cfg.networks.rule}, alpha {cfg.networks.alpha}, sign "
            f"{cfg.networks.sign}; template match IoU > {threshold}",
        ),
        (
            "massive units",
            f"of each set: among the top {MASSIVE['top_k']} RMS units of every layer, the "
            f"{MASSIVE['n_units']} most frequent across its networks",
        ),
        ("code", str(prov.get("code_version", ""))),
    ]


def write_analysis_explorer(
    out: Path,
    cfg: DictConfig,
    lm: LoadedModel,
    stimuli: Mapping[str, Any],
    stores: Mapping[str, ActivationStore],
    results: Mapping[str, dict],
    combined: Any,
) -> tuple[Path, dict]:
    """Write ``networks/descriptions.json`` and ``explorer.html`` into ``out``; returns the page's path and the
    page."""
    described = describe_analysis(lm, stimuli, stores, results, combined)
    atomic_write_text(out / "networks" / "descriptions.json", json.dumps(described, indent=None))
    page = analysis_page(cfg, lm, results, combined, described, out / "figures")
    path = render_explorer(page, out / "explorer.html")
    log.info("explorer: %s (%.0f KB)", path, path.stat().st_size / 1024)
    return path, page


def log_explorer(logger: Any, page: dict, html: Path, networks: Mapping[str, NetworkSet], fig_dir: Path) -> None:
    """To a W&B logger (others are left alone): the cards as a ``wandb.Table`` (``explorer/cards``, one row per
    network with its map as an image) and the page as an artifact of type ``explorer`` (plus ``explorer/page``,
    the page as ``wandb.Html``)."""
    if not isinstance(logger, WandbLogger):  # as evaluate.py: only W&B has tables and artifacts
        return
    import wandb  # a W&B logger exists, so wandb is importable; only then

    columns = [
        "set",
        "network",
        "neurons",
        "fraction",
        "stability",
        "layers",
        "top units",
        "massive units",
        "top contexts",
        "top texts",
        "map",
    ]
    rows = []
    for section in page["sets"]:
        nets = networks.get(section["id"])
        for card in section["cards"]:
            image = None
            if nets is not None:
                png = plot_network_maps(
                    nets,
                    fig_dir / "cards" / f"{section['id']}_network_{card['network']}.png",
                    indices=[nets.network_ids().index(card["network"])],
                    ncols=1,
                )
                image = wandb.Image(str(png))
            rows.append(
                [
                    section["id"],
                    card["network"],
                    card["size"],
                    card["fraction"],
                    card["stability"],
                    card["layers_text"],
                    ", ".join(f"L{u['layer']}:u{u['unit']}" for u in card["top_units"][:5]),
                    ", ".join(str(m["unit"]) for m in card["massive"]),
                    " | ".join(_context(e) for e in card["examples"][:5]),
                    ", ".join(t["text"] for t in card["texts"][:3]),
                    image,
                ]
            )
    run = logger.experiment
    run.log(
        {
            "explorer/cards": wandb.Table(columns=columns, data=rows),
            "explorer/page": wandb.Html(html.read_text(), inject=False),
        }
    )
    artifact = wandb.Artifact(
        f"explorer-{run.id}",
        type="explorer",
        description="fnet explorer: one self-contained HTML page, a card per network",
    )
    artifact.add_file(str(html), name="explorer.html")
    run.log_artifact(artifact)
