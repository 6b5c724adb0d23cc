"""The default analysis (``python analyze.py``, ``analysis=networks``): texts -> recorder -> activation store ->
decomposition -> networks -> report.

For every stimulus dataset :func:`run` records the template and individual texts (cached and resumable under
``paths.cache_dir``, :func:`fnet.recording.record_dataset`), runs group ICA over the stacked template texts (K
templates, restarts and stability) and individual ICA per text (:mod:`fnet.networks.find`), thresholds the
spatial maps into :class:`~fnet.networks.NetworkSet` s, counts how many individual networks match each template
(IoU > ``networks.match_threshold``, the paper's Tables 1-3), and writes ``report.md``, the network files and
figures into the Hydra run folder. A group decomposition over all datasets' template texts together (``all``) is
made too: it is the default network set that ``evaluate.py`` lesions. ``explorer.html`` shows what each network
responds to (:mod:`fnet.pipelines.explore`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from sklearn.exceptions import ConvergenceWarning

from fnet.cache import code_version
from fnet.models import LoadedModel
from fnet.networks import (
    NETWORK_CODE,
    Decomposition,
    NetworkSet,
    group_networks,
    individual_networks,
    iou,
    match_templates,
)
from fnet.pipelines._common import load_lm, load_stimuli, make_estimator, record_from_config, thresholds
from fnet.pipelines.explore import log_explorer, write_analysis_explorer
from fnet.pipelines.hydra_utils import container, instantiate_loggers, log_hyperparameters
from fnet.provenance import provenance
from fnet.recording import ActivationStore, slug
from fnet.report import markdown_table, plot_counts_per_layer, plot_iou_matrix, plot_network_maps, provenance_header

log = logging.getLogger(__name__)

__all__ = ["run"]


def _provenance(lm: LoadedModel, cfg: DictConfig, **fields: Any) -> dict:
    ica = container(cfg.ica)
    max_length = min(int(cfg.record.max_length), lm.max_positions or int(cfg.record.max_length))
    return provenance(
        **lm.identity(),
        code_version=code_version(*NETWORK_CODE),
        ckpt_path=cfg.ckpt_path,
        signal=cfg.record.signal,
        max_length=max_length,
        seed=int(cfg.seed),
        K=int(ica.get("n_components", 0) or 0),
        ica=ica,
        **fields,
    )


def _collecting_convergence(fit: Callable, *args, **kwargs) -> tuple[Any, list[str]]:
    """``fit(*args, **kwargs)`` with its ConvergenceWarnings collected instead of shown (one per fit, restarts
    included, would make a wall of warnings); every other warning passes through. Returns the result and the
    collected messages, which the caller reports once per decomposition, by name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(*args, **kwargs)
    messages = []
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, messages


def _group(lm: LoadedModel, cfg: DictConfig, name: str, arrays: list, data_prov: dict) -> Decomposition:
    estimator, n_init = make_estimator(cfg.ica, int(cfg.seed))
    group, messages = _collecting_convergence(
        group_networks,
        estimator,
        arrays,
        lm.n_layers,
        lm.width(cfg.record.signal),
        thresholds(cfg),
        name=name,
        n_init=n_init,
        seed=int(cfg.seed),
        provenance=_provenance(lm, cfg, data_detail=data_prov),
        keep_sources=True,
    )
    if group.converged is False:
        log.warning(
            "group decomposition %r did not converge: %d of %d restarts stopped short, the kept one "
            "included (first: %s)",
            name,
            len(messages),
            n_init,
            messages[0] if messages else "no message",
        )
    elif messages:
        log.info(
            "group decomposition %r converged; %d of its other %d restarts did not", name, len(messages), n_init - 1
        )
    return group


def _as_all(group: Decomposition, provenance: dict) -> Decomposition:
    """The group decomposition of the only stimulus dataset, as the ``all`` decomposition: the same networks,
    with the provenance ``_group(..., "all", ...)`` would give them (``data="all"``, every dataset's details)."""
    nets = group.networks
    prov = dict(provenance, level="group", data="all", n_init=nets.provenance.get("n_init", 1), n_tokens=group.n_tokens)
    copy = NetworkSet(
        nets.masks.clone(),
        maps=None if nets.maps is None else nets.maps.clone(),
        stability=nets.stability,
        provenance=prov,
        signs=nets.signs,
    )
    return dataclasses.replace(group, name="all", networks=copy, seconds=0.0)  # no second fit


def _individuals(lm: LoadedModel, cfg: DictConfig, name: str, store: ActivationStore, ids: list[str]):
    estimator, _ = make_estimator(cfg.ica, int(cfg.seed))
    individuals, _ = _collecting_convergence(
        individual_networks,
        estimator,
        store.arrays(ids),
        ids,
        lm.n_layers,
        lm.width(cfg.record.signal),
        thresholds(cfg),
        name=name,
        provenance=_provenance(lm, cfg),
        keep_sources=True,
    )
    failed = [ind.name for ind in individuals if ind.converged is False]
    if failed:
        log.warning(
            "%d of %d individual decompositions of %r did not converge: %s",
            len(failed),
            len(individuals),
            name,
            ", ".join(failed),
        )
    return individuals


# --------------------------------------------------------------------------------------------------------------
# The analysis run
# --------------------------------------------------------------------------------------------------------------
def run(cfg: DictConfig) -> dict:
    """Run the analysis of a composed ``analyze`` config (record, decompose, networks, figures) in
    ``cfg.paths.output_dir``; returns the summary it writes."""
    out = Path(cfg.paths.output_dir)
    (out / "networks").mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    loggers = instantiate_loggers(cfg.logger)
    log_hyperparameters(loggers, cfg)
    torch.manual_seed(int(cfg.seed))

    t0 = time.time()
    lm = load_lm(cfg)
    stimuli = load_stimuli(cfg)
    timings = {"load_model_s": time.time() - t0}

    results: dict[str, dict] = {}
    stores: dict[str, ActivationStore] = {}
    group_arrays_all: list = []
    all_prov: dict = {}
    metrics: dict[str, float] = {}
    for name, stim in stimuli.items():
        t = time.time()
        store = record_from_config(lm, cfg, name, list(stim.template) + list(stim.individual))
        timings[f"record_{name}_s"] = time.time() - t
        stores[name] = store
        template_arrays = store.arrays([x.id for x in stim.template])
        group_arrays_all += template_arrays
        all_prov[name] = stim.provenance

        t = time.time()
        group = _group(lm, cfg, name, template_arrays, stim.provenance)
        group.networks.save(out / "networks" / f"{name}_group.safetensors")
        individuals = []
        if cfg.individual and stim.individual:
            individuals = _individuals(lm, cfg, name, store, [x.id for x in stim.individual])
            ind_dir = out / "networks" / f"{name}_individual"
            ind_dir.mkdir(exist_ok=True)
            for ind in individuals:
                ind.networks.save(ind_dir / f"{slug(ind.name)}.safetensors")
        timings[f"decompose_{name}_s"] = time.time() - t

        match = (
            match_templates(
                group.networks, [i.networks for i in individuals], threshold=float(cfg.networks.match_threshold)
            )
            if individuals
            else None
        )
        results[name] = {"group": group, "individuals": individuals, "match": match}
        _dataset_figures(fig_dir, name, group, match, cfg.map_panels)
        sizes = group.networks.sizes().double()
        metrics.update(
            {
                f"{name}/n_tokens_template": float(group.n_tokens),
                f"{name}/mean_network_size": float(sizes.mean()),
                f"{name}/mean_network_fraction": float(group.networks.fractions().mean()),
            }
        )
        if group.networks.stability is not None:
            metrics[f"{name}/mean_stability"] = float(group.networks.stability.double().mean())
        if match is not None:
            metrics[f"{name}/mean_matches_per_template"] = float(match.counts.double().mean())

    t = time.time()
    combined = _all_datasets(lm, cfg, results, group_arrays_all, all_prov, out)
    timings["decompose_all_s"] = time.time() - t

    summary = _write_report(cfg, out, lm, stimuli, results, combined, timings)
    explorer, page = write_analysis_explorer(out, cfg, lm, stimuli, stores, results, combined)
    networks = {slug(n): r["group"].networks for n, r in results.items()} | {"all": combined.networks}
    for logger in loggers:
        logger.log_metrics(metrics)
        _log_figures(logger, fig_dir)
        log_explorer(logger, page, explorer, networks, fig_dir)
        logger.finalize("success")
    log.info("analysis report: %s", out / "report.md")
    return summary


def _all_datasets(lm: LoadedModel, cfg: DictConfig, results: dict, arrays: list, data_prov: dict, out: Path):
    """The group decomposition ``all`` over every dataset's template texts, saved with its figure."""
    fig_dir = out / "figures"
    if len(results) == 1:  # `all` stacks the same texts as that one group: the same fit, not refitted
        name = next(iter(results))
        combined = _as_all(results[name]["group"], _provenance(lm, cfg, data_detail=data_prov))
        # the same networks as that dataset's figure: copied, not drawn again
        shutil.copyfile(fig_dir / f"{name}_group_networks.png", fig_dir / "all_group_networks.png")
    else:
        combined = _group(lm, cfg, "all", arrays, data_prov)
        plot_network_maps(combined.networks, fig_dir / "all_group_networks.png", cfg.map_panels)
    combined.networks.save(out / "networks" / "all_group.safetensors")
    return combined


def _dataset_figures(fig_dir: Path, name: str, group: Decomposition, match, max_panels: int | None) -> None:
    # at K=512 a panel per network took 6 of a job's ~25 minutes and made an 18 MB image nobody reads: the first
    # `map_panels` are drawn, explorer.html has a card for every network
    plot_network_maps(group.networks, fig_dir / f"{name}_group_networks.png", max_panels)
    plot_counts_per_layer(group.networks, fig_dir / f"{name}_counts_per_layer.png")
    if match is not None:
        plot_iou_matrix(
            match.iou.numpy() if hasattr(match.iou, "numpy") else match.iou,
            fig_dir / f"{name}_template_individual_iou.png",
            xlabel="individual networks (all texts)",
            ylabel="group template",
            title=f"{name}: template x individual IoU",
        )


def _log_figures(logger, fig_dir: Path) -> None:
    if hasattr(logger, "log_image"):  # W&B
        for png in sorted(fig_dir.glob("*.png")):
            logger.log_image(key=f"figures/{png.stem}", images=[str(png)])


def _write_report(cfg, out: Path, lm, stimuli, results, combined, timings) -> dict:
    """``report.md`` (one section per step and dataset) and ``summary.json``; returns the summary."""
    lines = _report_header(cfg, lm, stimuli, results, combined)
    lines += _convergence_section(results, combined)
    summary: dict[str, Any] = {"datasets": {}, "timings": timings}
    for name, res in results.items():
        section, summary["datasets"][name] = _dataset_section(cfg, name, res)
        lines += section
    lines += _similarity_section(results)
    lines += [
        "## Timings",
        "",
        markdown_table([{"step": k.removesuffix("_s"), "seconds": round(v, 1)} for k, v in timings.items()]),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _report_header(cfg, lm, stimuli, results, combined) -> list[str]:
    """Title, provenance, what was decomposed and thresholded, and the data table."""
    K = int(cfg.ica.n_components)
    n_neurons = lm.n_neurons(cfg.record.signal)
    return [
        "# fnet functional-network analysis",
        "",
        provenance_header(
            {k: v for k, v in combined.networks.provenance.items() if k not in ("data_detail", "ica", "pid", "host")}
        ),
        "",
        f"Signal `{cfg.record.signal}`: {lm.n_layers} layers x {lm.width(cfg.record.signal)} = {n_neurons} neurons. "
        f"Decomposition `{cfg.ica['_target_']}` with K = {K}; networks = z-scored spatial maps thresholded "
        f"with rule `{cfg.networks.rule}` (alpha {cfg.networks.alpha}, sign policy `{cfg.networks.sign}`); "
        f"template match = IoU > {cfg.networks.match_threshold}.",
        "",
        "What each network responds to (its top tokens in context, the texts that drive it, its layers, top units "
        "and massive units): `explorer.html`, one self-contained page beside this report; open it in a browser.",
        "",
        "## Data",
        "",
        markdown_table(
            [
                {
                    "dataset": n,
                    "source": s.provenance.get("source", ""),
                    "template texts": len(s.template),
                    "individual texts": len(s.individual),
                    "template tokens": results[n]["group"].n_tokens,
                }
                for n, s in stimuli.items()
            ]
        ),
        "",
    ]


def _convergence_section(results, combined) -> list[str]:
    """One row per group decomposition (each dataset, then all): tokens, iterations, convergence, sizes."""
    conv_rows = []
    for name, res in list(results.items()) + [("all", {"group": combined})]:
        g = res["group"]
        nets = g.networks
        conv_rows.append(
            {
                "dataset": name,
                "tokens": g.n_tokens,
                "n_iter": g.n_iter,
                "converged": g.converged,
                "mean size": float(nets.sizes().double().mean()),
                "mean fraction": float(nets.fractions().mean()),
                "mean stability": (float(nets.stability.double().mean()) if nets.stability is not None else None),
                "seconds": round(g.seconds, 1),
            }
        )
    lines = ["## Group decompositions", "", markdown_table(conv_rows), ""]
    unconverged = [r["dataset"] for r in conv_rows if r["converged"] is False]
    if unconverged:
        lines += [
            f"**Warning:** group decomposition(s) {', '.join(unconverged)} did not converge (see `n_iter`); "
            "raise `ica.max_iter`, loosen `ica.tol` or use `ica=picard`.",
            "",
        ]
    return lines


def _dataset_section(cfg, name: str, res: dict) -> tuple[list[str], dict]:
    """One dataset's template networks (size, stability, top layers), individual fits and template matching;
    with its entry of ``summary.json``."""
    nets = res["group"].networks
    lines = [
        f"## {name}",
        "",
        f"Network files: `networks/{name}_group.safetensors`, individual networks in "
        f"`networks/{name}_individual/`. Figures: `figures/{name}_*.png`.",
        "",
    ]
    size_rows = []
    counts, sizes, fractions = nets.counts_per_layer(), nets.sizes(), nets.fractions()  # once, not per network
    for k in range(len(nets)):
        row = {"network": k, "neurons": int(sizes[k]), "fraction": float(fractions[k])}
        if nets.stability is not None:
            row["stability"] = float(nets.stability[k])
        top_layers = torch.argsort(counts[k], descending=True)[:3].tolist()
        row["top layers (count)"] = ", ".join(f"{l} ({int(counts[k, l])})" for l in top_layers)
        size_rows.append(row)
    lines += ["### Template networks", "", markdown_table(size_rows), ""]
    ind = res["individuals"]
    if ind:
        failed = [i.name for i in ind if i.converged is False]
        not_converged = f" Not converged: {', '.join(failed)}." if failed else ""
        lines += [
            f"Individual decompositions: {len(ind)} texts, {len(ind) - len(failed)} converged.{not_converged}",
            "",
        ]
    match = res["match"]
    if match is not None:
        lines += [
            f"### Template matching (individual networks with IoU > {cfg.networks.match_threshold})",
            "",
            markdown_table(match.as_rows()),
            "",
        ]
    summary = {
        "sizes": nets.sizes().tolist(),
        "stability": None if nets.stability is None else nets.stability.tolist(),
        "matches": None if match is None else match.counts.tolist(),
    }
    return lines, summary


def _similarity_section(results) -> list[str]:
    """Cross-dataset similarity of templates: do different stimuli recruit the same networks? (Two or more
    datasets only.)"""
    names = list(results)
    if len(names) < 2:
        return []
    rows = []
    for a in names:
        row = {"dataset": a}
        for b in names:
            m = iou(results[a]["group"].networks, results[b]["group"].networks)
            row[b] = float(m.max(dim=1).values.mean())
        rows.append(row)
    return [
        "## Cross-dataset template similarity",
        "",
        "Mean over the row dataset's templates of the best IoU with the column dataset's templates.",
        "",
        markdown_table(rows),
        "",
    ]
