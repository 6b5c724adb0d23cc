"""A study job: the neuron scale and the massive units of one NetworkSet's model, for its controls.

``python -m fnet.pipelines.study_controls --networks N.safetensors --out DIR --top-k 4 --n-units 4 -- <overrides>``
(the overrides: those of the analyze job that made the networks)

The analyze overrides name the model (or fine-tuned checkpoint) and the stimuli the networks were found on; the
recording of those stimuli is reused from the activation cache (the same key as ``analyze.py``'s), and every
neuron's scale (:func:`fnet.intervene.controls.neuron_scale`, RMS over the template tokens the ICA was fitted on)
is computed from it. The job writes into ``DIR``:

- ``scale.safetensors``: ``scale  # [layer, unit]`` and each neuron's mean (for ``mask.ablation=mean``) with their
  provenance (the model's fingerprint, signal, texts; :func:`fnet.intervene.controls.save_scale`);
- ``controls.json``: the massive units (the ``top_k`` largest-scale units of every layer, ranked by how many
  networks hold them; the first ``n_units``), their recurrence across networks, the per-layer top units, and what
  share of each network they are.

The controls themselves are ordinary masks of :data:`fnet.intervene.MASKS` that ``evaluate.py`` builds with
``mask.networks_file=N mask.scale_file=DIR/scale.safetensors`` (``mask=magnitude``, ``magnitude_preserve``,
``spared``, ``unit``), so every control is one evaluate job and no mask is stored twice.
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
from hydra import compose, initialize_config_dir

from fnet.cache import atomic_write_text
from fnet.intervene.controls import massive_units, recurring_units, save_scale, top_units
from fnet.networks import NetworkSet
from fnet.paths import conf_dir
from fnet.pipelines._common import load_lm, neuron_scale_for_config
from fnet.pipelines.config import register_configs

__all__ = ["massive_info", "main"]

log = logging.getLogger(__name__)


def massive_info(masks: np.ndarray, scale: np.ndarray, *, n_units: int, top_k: int) -> dict:
    """The JSON-able description of the networks' massive units (``controls.json``).

    Parameters
    ----------
    masks : bool array ``[K, layer, unit]``
        The networks.
    scale : array ``[layer, unit]``
        Neuron scale.
    n_units, top_k : int
        Massive units kept; top-magnitude units per layer that are candidates
        (:func:`fnet.intervene.controls.massive_units`).
    """
    K = masks.shape[0]
    units = massive_units(masks, scale, top_k=top_k, n_units=n_units)
    massive = recurring_units(masks, among=units)
    return {
        "massive_units": massive,
        "units": units,
        "top_k": top_k,
        "n_units": n_units,
        "top_units": top_units(scale, top_k).tolist(),
        "network_sizes": masks.sum(axis=(1, 2)).tolist(),
        "networks_with_massive": {str(row["unit"]): row["network_ids"] for row in massive},
        "massive_fraction_of_networks": [float(masks[k][:, units].sum() / max(1, masks[k].sum())) for k in range(K)],
    }


def _analysis_config(overrides: Sequence[str]):
    register_configs()
    os.environ.setdefault("PROJECT_ROOT", os.getcwd())  # paths.root_dir outside a Hydra run
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides) + ["paths.output_dir=."])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the study's scale job (see the module docstring); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    analyze_overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, analyze_overrides = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m fnet.pipelines.study_controls", description=__doc__.split("\n")[0])
    parser.add_argument("--networks", required=True, help="NetworkSet file (analyze.py's all_group.safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-units", type=int, default=4, help="massive units to spare / lesion alone")
    parser.add_argument("--top-k", type=int, default=4, help="top-magnitude units per layer (massive candidates)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    netset = NetworkSet.load(args.networks)
    masks = netset.masks.numpy()  # [K, layer, unit]
    cfg = _analysis_config(analyze_overrides)
    lm = load_lm(cfg)
    if lm.fingerprint != netset.provenance.get("model_fingerprint", lm.fingerprint):
        raise ValueError(
            f"the analyze overrides give model {lm.name} (fingerprint {lm.fingerprint[:12]}…), not the "
            f"model of {args.networks}: pass the overrides of the analyze job that made the networks"
        )
    scale, provenance = neuron_scale_for_config(cfg, lm)
    if scale.shape != masks.shape[1:]:
        raise ValueError(f"neuron scale {scale.shape} does not fit the networks {masks.shape[1:]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = massive_info(masks, scale, n_units=args.n_units, top_k=args.top_k)
    mean = provenance.pop("mean")
    save_scale(out / "scale.safetensors", scale, dict(provenance, networks=str(Path(args.networks).resolve())), mean)
    atomic_write_text(out / "controls.json", json.dumps(info, indent=1))
    log.info("massive units %s; scale of %s in %s", info["units"], lm.name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
