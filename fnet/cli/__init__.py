"""fnet's commands: ``fnet analyze | evaluate | train | study``, also installed as ``fnet-analyze``,
``fnet-evaluate``, ``fnet-train`` and ``fnet-study``.

The Hydra entry points live in this package, so an installed fnet needs no checkout; the repository's
``analyze.py``, ``evaluate.py`` and ``train.py`` are aliases of them. Each reads its primary config
(``analyze.yaml``, ``evaluate.yaml``, ``train.yaml``) from :func:`fnet.paths.conf_dir`, an absolute folder inside
the package, and takes Hydra's command line::

    fnet analyze ica.n_components=64        # = fnet-analyze ... = python -m fnet.cli.analyze ... = analyze.py ...
    fnet evaluate task=sst2 mask=lesion mask.networks=3
    fnet train experiment=finetune_sst2
    fnet study tiny --dry-run               # = fnet-study ... = python -m fnet.study ...
    fnet analyze --config-dir ~/my_conf model=my_model    # your configs beside fnet's (Hydra's search path)

One module per command (:mod:`fnet.cli.analyze`, :mod:`fnet.cli.evaluate`, :mod:`fnet.cli.train`,
:mod:`fnet.cli.study`), each with a ``main``. The top layer: it imports the pipelines and the study runner, and
nothing of fnet imports it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from fnet.paths import conf_dir
from fnet.version import __version__

__all__ = ["COMMANDS", "hydra_entry", "main"]

#: ``fnet <command>``: the module that runs it and what it does
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("fnet.cli.analyze", "record a model's MLP signals, decompose them, find functional networks (Hydra)"),
    "evaluate": ("fnet.cli.evaluate", "evaluate a (masked) model on one task (Hydra)"),
    "train": ("fnet.cli.train", "fine-tune a model on a task, then test it (Hydra)"),
    "study": ("fnet.cli.study", "plan, run and report a whole study from a preset (python -m fnet.study)"),
}


def hydra_entry(config_name: str, job: Callable[[Any], Any]) -> Callable[[], Any]:
    """A Hydra main for one of fnet's primary configs: validate the composed config, then run the job.

    Parameters
    ----------
    config_name : str
        ``analyze``, ``evaluate`` or ``train``: the primary config of :func:`fnet.paths.conf_dir` and the schema
        :func:`fnet.pipelines.config.validate_config` checks it against.
    job : callable
        ``job(cfg)`` does the work once the config is valid; its value is the Hydra task function's.

    Returns
    -------
    callable
        A function of no arguments that parses Hydra's command line (``sys.argv``) and runs the job, recording a
        failure as :func:`fnet.pipelines.hydra_utils.task_wrapper` does.
    """
    import hydra  # here, not at the top: ``fnet --help`` and ``fnet study`` need no Hydra

    # here too: the pipelines import torch and transformers, which `fnet --help` must not wait for
    from fnet.pipelines.config import register_configs, validate_config
    from fnet.pipelines.hydra_utils import task_wrapper  # (the same reason)

    register_configs()

    @task_wrapper
    def run(cfg):
        validate_config(cfg, config_name)  # unknown keys (+typos), types, ranges: before any work
        return job(cfg)

    # an absolute config_path: the package's own configs, wherever it is installed. Hydra's job name comes from
    # the config (hydra.job.name: ${task_name}, conf/hydra/default.yaml), not from this module's name.
    return hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(run)


def _usage() -> str:
    lines = [
        f"fnet {__version__}: functional networks and key neurons in language models",
        "",
        "usage: fnet COMMAND [ARGS...]    (fnet COMMAND --help: the command's options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<9} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``fnet COMMAND [ARGS...]``: run one of :data:`COMMANDS` with the rest of the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program's name (default: ``sys.argv[1:]``), e.g. ``["analyze", "debug=default"]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 for a missing or unknown command (a Hydra command that fails raises).

    Examples
    --------
    >>> main(["nonsense"])  # the usage goes to stderr
    2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"fnet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "study":
        return module.main(rest)
    # Hydra parses sys.argv. The program becomes the command's own script (fnet-train beside fnet) where there is
    # one, because Lightning's DDP starts its other processes by running sys.argv again.
    script = Path(sys.argv[0]).with_name(f"fnet-{name}")
    sys.argv = [str(script) if script.is_file() else sys.argv[0], *rest]
    module.main()
    return 0
