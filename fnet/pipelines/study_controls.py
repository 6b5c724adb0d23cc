"""A study job: derive the control and diagnostic networks of one NetworkSet, as a NetworkSet file.

``python -m fnet.pipelines.study_controls --networks N.safetensors --out DIR --seeds 5 --n-units 4 -- <analyze overrides>``

The analyze overrides name the model (or fine-tuned checkpoint) and the stimuli the networks were found on; the
recording of those stimuli is reused from the activation cache (the same key as ``analyze.py``'s), and every
neuron's scale (:func:`fnet.intervene.controls.neuron_scale`, RMS over the template tokens the ICA was fitted on) is
computed from it. The job writes into ``DIR``:

- ``controls.safetensors``: a NetworkSet with the provenance of the input networks (the same model, so
  ``evaluate.py`` applies it like the original) whose networks are, in the order of :func:`controls_layout`:
  magnitude-matched random draws for every network and seed, and for the union of all networks (disjoint from
  the reference, except in a layer the reference fills: the union of many networks, for preservation); every network
  and the union with the massive units spared; one single-unit lesion per massive unit;
- ``controls.json``: that layout (name -> network index), the massive units, their recurrence across networks,
  the per-layer top units, the number of nearest-bin fallbacks of the magnitude-matched draws, and the layers
  where a draw had to overlap its reference (``overlap_layers``);
- ``scale.npy``: ``[layer, unit]`` neuron scale.

So every control is an ordinary ``evaluate.py mask=lesion|preserve mask.networks_file=DIR/controls.safetensors
mask.networks=<index>`` job: no new mask mode is needed to run a study.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from fnet.intervene.controls import (magnitude_matched_draw, massive_units, recurring_units, spare, top_units,
                                    unit_masks)

__all__ = ["controls_layout", "derive_controls", "main"]

log = logging.getLogger(__name__)


def controls_layout(n_networks: int, seeds: int, n_units: int) -> dict[str, int]:
    """Index of every derived network in ``controls.safetensors``.

    Names: ``magnitude/net{k}/seed{s}``, ``magnitude/all/seed{s}``, ``spared/net{k}``, ``spared/all``,
    ``unit/{i}`` (the i-th most recurrent massive unit).
    """
    names = [f"magnitude/net{k}/seed{s}" for k in range(n_networks) for s in range(seeds)]
    names += [f"magnitude/all/seed{s}" for s in range(seeds)]
    names += [f"spared/net{k}" for k in range(n_networks)] + ["spared/all"]
    names += [f"unit/{i}" for i in range(n_units)]
    return {name: i for i, name in enumerate(names)}


def derive_controls(masks: np.ndarray, scale: np.ndarray, *, seeds: int, n_units: int, top_k: int,
                    n_bins: int = 10) -> tuple[np.ndarray, dict]:
    """The derived networks and their description.

    Parameters
    ----------
    masks : bool array ``[K, layer, unit]``
        The networks.
    scale : array ``[layer, unit]``
        Neuron scale.
    seeds : int
        Random draws per network (seed ``s`` of network ``k`` uses seed ``1000*k + s``; the union uses
        ``1000*K + s``).
    n_units : int
        Massive units to spare and lesion alone: the top-magnitude units (``top_k`` per layer) ranked by how
        many networks contain them. Fewer than ``n_units`` such units: the remaining slots are empty masks.
    top_k : int
        Top-magnitude units per layer that count as massive candidates.

    Returns
    -------
    (numpy.ndarray, dict)
        ``derived  # [len(layout), layer, unit] bool`` and the JSON-able description (``controls.json``).
    """
    K = masks.shape[0]
    layout = controls_layout(K, seeds, n_units)
    derived = np.zeros((len(layout),) + masks.shape[1:], dtype=bool)  # [n_derived, layer, unit]
    union = masks.any(axis=0)  # [layer, unit]
    fallbacks, overlap = {}, {}
    draws = [(f"magnitude/net{k}/seed{s}", masks[k], 1000 * k + s) for k in range(K) for s in range(seeds)]
    draws += [(f"magnitude/all/seed{s}", union, 1000 * K + s) for s in range(seeds)]
    for name, reference, seed in draws:
        # disjoint from the reference where its layer allows; a layer the union fills (large K, preservation)
        # is drawn among all its neurons, and listed in controls.json
        drawn, n_fb = magnitude_matched_draw(reference, scale, n_bins=n_bins, seed=seed, disjoint="prefer")
        derived[layout[name]] = drawn
        fallbacks[name] = n_fb
        layers = np.flatnonzero((drawn & reference).any(axis=1)).tolist()
        if layers:
            overlap[name] = layers
    top = top_units(scale, top_k)  # [layer, top_k]
    units = massive_units(masks, scale, top_k=top_k, n_units=n_units)
    massive = recurring_units(masks, among=units)
    for k in range(K):
        derived[layout[f"spared/net{k}"]] = spare(masks[k], units)
    derived[layout["spared/all"]] = spare(union, units)
    if units:
        derived[[layout[f"unit/{i}"] for i in range(len(units))]] = unit_masks(masks, units)
    info = {
        "layout": layout, "massive_units": massive, "units": units, "top_k": top_k, "n_bins": n_bins,
        "top_units": top.tolist(), "fallbacks": fallbacks, "overlap_layers": overlap,
        "sizes": {name: int(derived[i].sum()) for name, i in layout.items()},
        "network_sizes": masks.sum(axis=(1, 2)).tolist(),
        "networks_with_massive": {str(row["unit"]): row["network_ids"] for row in massive},
        "massive_fraction_of_networks": [float(masks[k][:, units].sum() / max(1, masks[k].sum()))
                                         for k in range(K)],
    }
    return derived, info


def _scale_from_analysis(overrides: Sequence[str], n_layers_expected: int) -> np.ndarray:
    """Neuron scale over the template texts of ``analyze.py <overrides>`` (its cached recording)."""
    from hydra import compose, initialize_config_dir

    from fnet.intervene.controls import neuron_scale
    from fnet.pipelines._common import load_lm, load_stimuli
    from fnet.pipelines.analyze import record_from_config
    from fnet.pipelines.config import register_configs

    register_configs()
    os.environ.setdefault("PROJECT_ROOT", os.getcwd())  # paths.root_dir outside a Hydra run
    conf_dir = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="analyze", overrides=list(overrides) + ["paths.output_dir=."])
    lm = load_lm(cfg)
    if lm.n_layers != n_layers_expected:
        raise ValueError(f"the analyze overrides give a model with {lm.n_layers} layers; the networks have "
                         f"{n_layers_expected}: pass the overrides of the analyze job that made the networks")
    arrays = []
    for name, stim in load_stimuli(cfg).items():  # the same store (key) analyze.py recorded: a cache hit
        store = record_from_config(lm, cfg, name, list(stim.template) + list(stim.individual), progress=False)
        arrays += store.arrays([t.id for t in stim.template])
    return neuron_scale(arrays, lm.n_layers)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the study's control evaluations (see the module docstring); returns the exit status."""
    import torch

    from fnet.cache import atomic_write_text
    from fnet.networks import NetworkSet

    argv = list(sys.argv[1:] if argv is None else argv)
    analyze_overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, analyze_overrides = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m fnet.pipelines.study_controls", description=__doc__.split("\n")[0])
    parser.add_argument("--networks", required=True, help="NetworkSet file (analyze.py's all_group.safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-units", type=int, default=4, help="massive units to spare / lesion alone")
    parser.add_argument("--top-k", type=int, default=4, help="top-magnitude units per layer (massive candidates)")
    parser.add_argument("--n-bins", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    netset = NetworkSet.load(args.networks)
    masks = netset.masks.numpy()  # [K, layer, unit]
    scale = _scale_from_analysis(analyze_overrides, masks.shape[1])
    if scale.shape != masks.shape[1:]:
        raise ValueError(f"neuron scale {scale.shape} does not fit the networks {masks.shape[1:]}")
    derived, info = derive_controls(masks, scale, seeds=args.seeds, n_units=args.n_units, top_k=args.top_k,
                                    n_bins=args.n_bins)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "scale.npy", scale)
    prov = dict(netset.provenance, derived_from=str(Path(args.networks).resolve()),
                derived="fnet.pipelines.study_controls: magnitude-matched draws, spared and single-unit networks")
    prov.pop("K", None)
    NetworkSet(torch.from_numpy(derived), provenance=prov).save(out / "controls.safetensors")
    atomic_write_text(out / "controls.json", json.dumps(info, indent=1))
    log.info("massive units %s; %d derived networks in %s", info["units"], len(derived), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
