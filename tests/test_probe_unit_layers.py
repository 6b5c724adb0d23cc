"""scripts/probe_unit_layers.py: the masks it scores are exactly the unit in the chosen layers."""

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "probe_unit_layers", Path(__file__).resolve().parents[1] / "scripts" / "probe_unit_layers.py"
)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_masks_hold_the_unit_in_exactly_the_chosen_layers():
    masks = probe.unit_layer_masks(5, [[1, 2], [0], [1, 2, 3]], n_layers=4, width=8)
    assert masks.shape == (3, 4, 8) and masks.dtype == torch.bool
    assert masks.sum().item() == 2 + 1 + 3
    assert masks[0, [1, 2], 5].all() and not masks[0, [0, 3]].any()
    assert masks[1, 0, 5] and masks[1].sum() == 1
    assert masks[2, [1, 2, 3], 5].all() and not masks[2, :, [0, 1, 2, 3, 4, 6, 7]].any()


@pytest.mark.parametrize(
    "unit, sets, match", [(8, [[0]], r"width is 8 \(valid: 0..7\)"), (1, [[0, 4]], r"\[4\] out of range.*layers 0..3")]
)
def test_bad_unit_or_layer_is_named_with_the_valid_range(unit, sets, match):
    with pytest.raises(ValueError, match=match):
        probe.unit_layer_masks(unit, sets, n_layers=4, width=8)
