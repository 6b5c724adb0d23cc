"""``pos_report.md``, the report of :func:`fnet.pipelines.pos.run_pos_analysis`: its options, data, key neurons,
classifier, lesion, ICA overlap and timings, one section per step, from the run's results dict.

Kept apart from the run so that the analysis reads as its steps and the report as its sections.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fnet.networks import NetworkSet
from fnet.report import markdown_table, provenance_header

__all__ = ["write_report"]


def write_report(out: Path, cfg, netset: NetworkSet, results: dict) -> Path:
    """Write ``pos_report.md``: options, data, key neurons, classifier, lesion, ICA overlap and timings.

    Parameters
    ----------
    out : Path
        The output folder (``cfg.paths.output_dir``); figures are linked relative to it.
    cfg : DictConfig
        The run's config; its ``analysis`` group is printed as the options.
    netset : NetworkSet
        The POS networks; their provenance heads the report.
    results : dict
        :func:`fnet.pipelines.pos.run_pos_analysis`'s results (without ``report``).

    Returns
    -------
    Path
        ``out / "pos_report.md"``.
    """
    lines = ["# POS key neurons", "", provenance_header(netset.provenance), ""]
    lines += ["## Options", "", "```yaml", OmegaConf.to_yaml(cfg.analysis).rstrip(), "```", ""]
    lines += _data_section(results) + _key_neuron_section(results) + _classifier_section(results)
    lines += _lesion_section(results) + _ica_section(results)
    timings = [{"stage": k, "seconds": v} for k, v in results["timings"].items()]
    lines += ["## Timings", "", markdown_table(timings, floatfmt=".1f"), ""]
    path = out / "pos_report.md"
    path.write_text("\n".join(lines))
    return path


def _data_section(results: dict) -> list[str]:
    return [
        "## Data",
        "",
        markdown_table(results["data"]),
        "",
        f"Words without a token of their own (left out): {results['unaligned_words']} in the attribution set.",
        f"Test sentences dropped because they also occur verbatim in the train split: "
        f"{results['dropped_test_sentences']}.",
        "",
    ]


def _key_neuron_section(results: dict) -> list[str]:
    lines = [
        "## Key neurons per tag",
        "",
        f"Network `k` of `{results['networks_path'].name}` is the tag in row `k`. `samples`: attributed words "
        "of the tag; `mean_frequency`: mean fraction of the tag's samples that kept each key neuron; "
        "`mean_logprob`: the model's mean log-probability of the tag's words; `top_layers`: layers with the "
        "most key neurons.",
        "",
        markdown_table(results["tag_rows"]),
        "",
    ]
    if results["skipped_tags"]:
        lines += [f"Tags with too few samples for a network (selection.min_samples): {results['skipped_tags']}", ""]
    for figure in results["figures"]:
        lines += [f"![{figure.stem}](figures/{figure.name})", ""]
    return lines


def _classifier_section(results: dict) -> list[str]:
    lines = ["## Classifier (UPOS of held-out words)", ""]
    if not results["classifier"]:
        return lines + ["(not run)", ""]
    columns = [
        "features",
        "n_neurons",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "macro_f1",
        "macro_f1_lo",
        "macro_f1_hi",
        "seconds",
    ]
    lines += [
        "Logistic regression on standardized activations; 95 % CI: bootstrap over test words (random: "
        "mean and t-interval over seeds).",
        "",
        markdown_table(results["classifier"], columns),
        "",
    ]
    if results["classifier_seeds"]:
        lines += ["Random seeds:", "", markdown_table(results["classifier_seeds"]), ""]
    return lines


def _lesion_section(results: dict) -> list[str]:
    lines = ["## Lesion (zero one tag's key neurons)", ""]
    if not results["lesion"]:
        return lines + ["(not run)", ""]
    selective = sum(r["selective"] for r in results["lesion"])
    return lines + [
        "Mean change of log p(word's first token) over the lesion words: `key_on_tag` on words of the "
        "tag (95 % t-interval over words), `key_off_tag` on other words, `random_*` the same for "
        "per-layer matched random masks (mean over seeds). `selective`: key on-tag < key off-tag and < "
        "random on-tag.",
        "",
        markdown_table(results["lesion"]),
        "",
        f"Selective for {selective}/{len(results['lesion'])} tags.",
        "",
    ]


def _ica_section(results: dict) -> list[str]:
    lines = ["## Overlap with ICA functional networks", "", f"{results['ica_note']}", ""]
    if results["ica_overlap"]:
        lines += [markdown_table(results["ica_overlap"]), ""]
    return lines
