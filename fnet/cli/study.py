"""``fnet study`` = ``fnet-study`` = ``python -m fnet.study``: plan, run and report a study (:mod:`fnet.study.cli`)."""

from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`fnet.study.cli.main` with ``argv``, e.g. ``["tiny", "--dry-run"]``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    from fnet.study.cli import main as study_main  # on call: `fnet --help` need not import the study's planner

    return study_main(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
