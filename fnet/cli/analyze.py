"""``fnet analyze`` = ``fnet-analyze`` = ``python -m fnet.cli.analyze`` = ``python analyze.py``: record a model's MLP
signals, decompose them and find functional networks, or run another analysis (``analysis=pos``).

See ``conf/analyze.yaml`` and the configuration reference for the options.
"""

from __future__ import annotations

from typing import Any

from fnet.cli import hydra_entry

__all__ = ["main"]


def _job(cfg) -> Any:
    from hydra.utils import get_method

    return get_method(cfg.analysis.run)(cfg)  # fnet.pipelines.analyze.run, fnet.pipelines.pos.run_pos_analysis


def main() -> None:
    """Run the analysis that Hydra's command line (``sys.argv``) configures, e.g. ``fnet-analyze debug=default``.

    Returns
    -------
    None
        The results are files in the run's folder (``outputs/analyze/<date>``): ``report.md``, ``networks/``,
        ``figures/``.
    """
    hydra_entry("analyze", _job)()


if __name__ == "__main__":
    main()
