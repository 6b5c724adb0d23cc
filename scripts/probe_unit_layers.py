"""Lesion one unit in chosen sets of layers and score each with ``evaluate.py``: which layers carry a massive
unit's effect?

The study's single-unit lesions zero a massive unit in every layer where the networks hold it. Which of those
layers matter is a separate question, asked here with one masks file (one network per layer set) and one
``evaluate.py`` run per set, so every score is the ordinary pipeline's. Usage::

    python scripts/probe_unit_layers.py --like <study>/controls/<task>_K10_raw-*/controls.safetensors \\
        --unit 507 --layers 1,2 --layers 8,9,10 --layers 1,2,8,9,10 --out /tmp/probe -- \\
        model=smollm2_135m task=ag_news ckpt_path=<checkpoint> task.limit=200

``--like`` is a networks file made for the same model: its provenance (model, checkpoint, code version) is
copied, so evaluate.py's check that networks belong to the model still applies. Writes ``<out>/probe.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fnet.networks.netset import NetworkSet

REPO_ROOT = Path(__file__).resolve().parents[1]


def unit_layer_masks(unit: int, layer_sets: list[list[int]], n_layers: int, width: int) -> torch.Tensor:
    """One mask per layer set: ``unit`` in those layers, nothing else. Returns ``[set, layer, unit]`` bool."""
    if not 0 <= unit < width:
        raise ValueError(f"--unit {unit}: the model's MLP width is {width} (valid: 0..{width - 1})")
    bad = sorted({x for s in layer_sets for x in s if not 0 <= x < n_layers})
    if bad:
        raise ValueError(f"--layers: {bad} out of range; the model has layers 0..{n_layers - 1}")
    masks = torch.zeros(len(layer_sets), n_layers, width, dtype=torch.bool)  # [set, layer, unit]
    for i, layers in enumerate(layer_sets):
        masks[i, layers, unit] = True
    return masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", required=True, help="a networks file made for the model under test")
    parser.add_argument("--unit", type=int, required=True)
    parser.add_argument("--layers", action="append", required=True, help="comma-separated layers (repeat)")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="evaluate.py overrides (model, task, ckpt_path, ...)")
    args = parser.parse_args(argv)

    like = NetworkSet.load(args.like)
    _, n_layers, width = like.masks.shape
    sets = [[int(x) for x in spec.split(",")] for spec in args.layers]
    masks = unit_layer_masks(args.unit, sets, n_layers, width)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prov = dict(
        like.provenance,
        derived=f"scripts/probe_unit_layers.py: unit {args.unit} in {args.layers}",
        derived_from=str(Path(args.like).resolve()),
    )
    networks = out / "probe.safetensors"
    NetworkSet(masks, provenance=prov).save(networks)

    rows = []
    for i, layers in enumerate(sets):
        run = out / f"set{i}"
        cmd = [
            sys.executable,
            "evaluate.py",
            *args.overrides,
            "mask=lesion",
            f"mask.networks={i}",
            f"mask.networks_file={networks}",
            f"hydra.run.dir={run}",
        ]
        subprocess.run(cmd, cwd=REPO_ROOT, env=os.environ, check=True)
        result = json.loads((run / "result.json").read_text())
        metric = next(iter(result["metrics"]))
        rows.append(
            {
                "unit": args.unit,
                "layers": " ".join(map(str, layers)),
                "metric": metric,
                "score": result["score"],
                "ci_low": result["metrics"][metric].get("ci_low"),
                "ci_high": result["metrics"][metric].get("ci_high"),
            }
        )
        print(rows[-1], flush=True)
    with open(out / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
