"""Checkpoints written before fnet's modules moved into stage packages still load."""

import functools
import importlib
import sys

import torch

from fnet.scoring.tasks import TaskSpec, get_task
from fnet.lit.checkpoints import OLD_MODULE_PATHS, load_checkpoint_file
from fnet.lit.finetune import warmup_scheduler


def _write_old_checkpoint(path, checkpoint):
    """Save ``checkpoint`` as train.py would have before the move: its pickle names fnet.tasks / fnet.finetune."""
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False, pickle_protocol=2)  # GLOBAL opcodes: text
    raw = path.read_bytes()
    assert b"fnet.scoring.tasks\n" in raw and b"fnet.lit.finetune\n" in raw
    path.write_bytes(raw.replace(b"fnet.scoring.tasks\n", b"fnet.tasks\n").replace(b"fnet.lit.finetune\n",
                                                                                     b"fnet.finetune\n"))


def test_checkpoint_with_old_module_paths_loads(tmp_path):
    task = get_task("sst2")
    checkpoint = {"fnet": {"module": "fnet.lit.classification.SequenceClassificationModule"},
                  "datamodule_hyper_parameters": {"task": task},
                  "scheduler": functools.partial(warmup_scheduler, name="cosine")}
    path = tmp_path / "old.ckpt"
    _write_old_checkpoint(path, checkpoint)
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
