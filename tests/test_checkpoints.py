"""Checkpoints written before fnet's modules moved into stage packages still load."""

import functools
import importlib
import sys

import pytest
import torch

from fnet.lit.checkpoints import OLD_MODULE_PATHS, load_checkpoint_file
from fnet.lit.classification import warmup_scheduler
from fnet.scoring.tasks import TaskSpec, get_task


def _write_old_checkpoint(path, checkpoint, scheduler_module=b"fnet.finetune"):
    """Save ``checkpoint`` as train.py would have before the moves: its pickle names fnet.tasks and
    ``scheduler_module`` (fnet.finetune, later fnet.lit.finetune) for warmup_scheduler."""
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False, pickle_protocol=2)  # GLOBAL opcodes: text
    raw = path.read_bytes()
    assert b"fnet.scoring.tasks\n" in raw and b"fnet.lit.classification\nwarmup_scheduler\n" in raw
    path.write_bytes(
        raw.replace(b"fnet.scoring.tasks\n", b"fnet.tasks\n").replace(
            b"fnet.lit.classification\nwarmup_scheduler\n", scheduler_module + b"\nwarmup_scheduler\n"
        )
    )


@pytest.mark.parametrize("scheduler_module", [b"fnet.finetune", b"fnet.lit.finetune"])
def test_checkpoint_with_old_module_paths_loads(tmp_path, scheduler_module):
    task = get_task("sst2")
    checkpoint = {
        "fnet": {"module": "fnet.lit.classification.SequenceClassificationModule"},
        "datamodule_hyper_parameters": {"task": task},
        "scheduler": functools.partial(warmup_scheduler, name="cosine"),
    }
    path = tmp_path / "old.ckpt"
    _write_old_checkpoint(path, checkpoint, scheduler_module)
    loaded = load_checkpoint_file(path)
    assert isinstance(loaded["datamodule_hyper_parameters"]["task"], TaskSpec)
    assert loaded["datamodule_hyper_parameters"]["task"] == task
    assert loaded["scheduler"].func is warmup_scheduler and loaded["scheduler"].keywords == {"name": "cosine"}
    assert sys.modules.get("fnet.tasks") is not importlib.import_module("fnet.scoring.tasks")  # only while loading


def test_old_module_paths_point_at_existing_modules():
    from fnet.lit.checkpoints import _is_fnet_module

    for old, new in OLD_MODULE_PATHS.items():
        assert not _is_fnet_module(old), f"{old} is an fnet module again: drop its alias"
        assert _is_fnet_module(new)
