"""``fnet evaluate`` = ``fnet-evaluate`` = ``python -m fnet.cli.evaluate`` = ``python evaluate.py``: evaluate a
(masked) language model on one task, e.g. ``fnet evaluate task=sst2 mask=lesion mask.networks=3``.

The logic is :func:`fnet.pipelines.evaluate.run`; see ``conf/evaluate.yaml`` for the options.
"""

from __future__ import annotations

from fnet.cli import hydra_entry

__all__ = ["main"]


def _job(cfg) -> float | None:
    from fnet.pipelines.evaluate import run  # torch, transformers: imported when a job runs, not for --help

    row = run(cfg)
    return None if row is None else row.get("score")  # the job's value for Hydra sweepers


def main() -> None:
    """Run the evaluation that Hydra's command line (``sys.argv``) configures.

    Returns
    -------
    None
        The job writes ``result.json`` into its run folder; in a sweep the job's score is what a Hydra sweeper sees.
    """
    hydra_entry("evaluate", _job)()


if __name__ == "__main__":
    main()
