"""Where fnet's own files are: its Hydra configs, its built-in corpus, and the repository checkout, if any.

The one module that knows the package's layout on disk; every run-time lookup of ``conf/`` goes through
:func:`conf_dir`. It imports nothing of fnet (the bottom layer, beside :mod:`fnet.cache`).

fnet runs the same from a checkout (``pip install -e .``: the package is the repository's ``fnet/``) and from an
installed wheel (``site-packages/fnet``). The configs are package data at ``fnet/conf`` in both: in a checkout that
is a link to the repository's ``conf/`` (where they are edited, and where their history is), and a wheel holds the
files themselves. What only a checkout has (``results/``, ``../shared/data`` beside it) is looked up through
:func:`checkout_root`, which is ``None`` for an installed fnet.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE_DIR", "checkout_root", "conf_dir", "corpus_dir", "project_root"]

#: the folder of the imported ``fnet`` package
PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The folder of fnet's Hydra configs (``fnet/conf``: ``analyze.yaml``, ``task/``, ``study/``, ...).

    Returns
    -------
    pathlib.Path
        An absolute path inside the imported package (in a checkout, a link to the repository's ``conf/``).

    Examples
    --------
    >>> (conf_dir() / "analyze.yaml").is_file() and (conf_dir() / "task" / "sst2.yaml").is_file()
    True
    """
    return PACKAGE_DIR / "conf"


def corpus_dir() -> Path:
    """The folder of the built-in stimulus corpus (``fnet/recording/corpus``: one JSON-lines file per genre).

    Returns
    -------
    pathlib.Path
        An absolute path inside the imported package.

    Examples
    --------
    >>> sorted(p.stem for p in corpus_dir().glob("*.jsonl"))
    ['code', 'encyclopedia', 'math', 'news']
    """
    return PACKAGE_DIR / "recording" / "corpus"


def checkout_root() -> Path | None:
    """The repository checkout this fnet was imported from, or ``None`` for an installed fnet.

    A checkout is recognised by the ``pyproject.toml`` of the ``fnet`` project beside the package folder.

    Returns
    -------
    pathlib.Path or None
        The repository root (holding ``fnet/``, ``conf``, ``results/``), or ``None``.
    """
    root = PACKAGE_DIR.parent
    project = root / "pyproject.toml"
    try:
        text = project.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "fnet"' in text else None


def project_root() -> Path:
    """The folder relative paths of a run start from: the checkout, else the current working folder.

    ``outputs/`` of a study and the default offline data folder (``../shared/data`` beside it) hang from it.

    Returns
    -------
    pathlib.Path
        :func:`checkout_root` when there is one, else :meth:`pathlib.Path.cwd`.
    """
    return checkout_root() or Path.cwd()
