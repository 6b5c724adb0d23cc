"""Studies: the paper's whole protocol for one model, as a resumable plan of ordinary jobs.

* :mod:`fnet.study.preset` -- presets (``conf/study/*.yaml``): their schema, read with OmegaConf and checked;
* :mod:`fnet.study.plan` -- a preset -> jobs (``train.py``, ``analyze.py``, the scale job, ``evaluate.py`` with
  the registry's masks and controls);
* :mod:`fnet.study.scheduler` -- jobs in content-hashed folders, run as their dependencies finish (``--workers``),
  evaluate jobs of one model batched in one process; finished jobs are skipped, failures recorded;
* :mod:`fnet.study.archive` -- finished training runs committed without their checkpoints, and restored on
  another machine (``--archive``, ``--restore``);
* :mod:`fnet.study.rekey` -- finished jobs moved to their new key when only the environment's key recipe changed;
* :mod:`fnet.study.paired` -- paired differences of two evaluations of the same rows, with bootstrap CIs;
* :mod:`fnet.study.summary` -- every job's ``result.json`` -> summary rows, beside the paper's number;
* :mod:`fnet.study.report` -- those rows -> paired effects and the report's statements, each effect beside its
  matched controls;
* :mod:`fnet.study.render` -- those -> ``report.md``, ``summary.csv``, ``effects.csv``, ``jobs.csv`` and figures;
* :mod:`fnet.study.compose` -- one report for a whole plan from committed study reports, each task taken whole
  from one that finished it (``--compose``);
* :mod:`fnet.study.cli` -- ``python -m fnet.study`` (``fnet study``).

Usage: ``python -m fnet.study smollm2 [--dry-run] [--only STAGE] [--root DIR] [--workers N] [--report-only]
[key=value ...]``.
"""

from fnet.study.cli import main
from fnet.study.plan import plan
from fnet.study.preset import load_preset
from fnet.study.scheduler import Job, run_jobs, summary_lines

__all__ = ["Job", "load_preset", "main", "plan", "run_jobs", "summary_lines"]
