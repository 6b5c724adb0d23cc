"""``fnet train`` = ``fnet-train`` = ``python -m fnet.cli.train`` = ``python train.py``: fine-tune a causal LM on a
task, then test its best checkpoint on the held-out split.

Everything happens in :func:`fnet.pipelines.train.run_training`; see ``conf/train.yaml``. With
``trainer=ddp_cpu`` or ``trainer=ddp`` Lightning starts the other processes by running the same command again.
"""

from __future__ import annotations

from typing import Any

from fnet.cli import hydra_entry

__all__ = ["main"]


def _job(cfg) -> Any:
    from fnet.pipelines.train import run_training  # torch, Lightning: imported when a job runs, not for --help

    return run_training(cfg)


def main() -> None:
    """Run the fine-tuning that Hydra's command line (``sys.argv``) configures, e.g. ``fnet-train debug=train``.

    Returns
    -------
    None
        Checkpoints and ``result.json`` go into the run's folder.
    """
    hydra_entry("train", _job)()


if __name__ == "__main__":
    main()
