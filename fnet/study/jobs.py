"""A study's jobs and their identity: :class:`Job`, the content keys that name a job's folder (:func:`job_key`, of
the code, the offline data and the library versions: :func:`environment_key`), the machine it ran on, and the
done-marker (``job.json``) that says a folder is finished. The runner is :mod:`fnet.study.scheduler`; split from it to
keep each module near 500 lines: what a job is here, how jobs run there.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fnet.cache import content_key, file_digest
from fnet.paths import PACKAGE_DIR, checkout_root, project_root

__all__ = [
    "ARCHIVED",
    "CODE_ROOT",
    "ENTRY_MODULES",
    "Job",
    "REPO_ROOT",
    "STAGES",
    "code_key",
    "cpu_signature",
    "done_record",
    "environment_key",
    "environment_parts",
    "finished_output",
    "job_key",
    "machine",
    "output_digest",
    "output_of",
    "set_aside",
    "slug",
]

#: in a job folder committed without its big files (:mod:`fnet.study.archive`): each left-out file's size and digest
ARCHIVED = "archived.json"


#: where jobs run and ``outputs/`` go: the checkout, or the working folder of an installed fnet (fnet.paths)
REPO_ROOT = project_root()
#: whose ``fnet/``, entry points and ``conf`` the code key hashes: the checkout, or the installed package's folder
CODE_ROOT = checkout_root() or PACKAGE_DIR.parent
#: the entry points a plan names, as the modules that run them (fnet.cli: what analyze.py etc. run too, and
#: there without a checkout); another entry (a test's fake script) runs as a script
ENTRY_MODULES = {"analyze.py": "fnet.cli.analyze", "evaluate.py": "fnet.cli.evaluate", "train.py": "fnet.cli.train"}

#: stages in run order
STAGES = ("train", "analyze", "controls", "evaluate")


@dataclass
class Job:
    """One run of an entry point.

    ``overrides`` may hold ``{dep_name}`` placeholders, replaced by the output path of job ``dep_name`` (which
    must be in ``deps``) when the job runs. ``meta`` describes the job for the report (task, condition, ...).

    Parameters
    ----------
    name : str
        Unique name, also the job's folder under the study root (``train/sst2``).
    stage : str
        One of :data:`STAGES`.
    entry : list of str
        What ``python`` runs, before the overrides (``["train.py"]``, ``["-m", "<module>"]``).
    overrides : list of str
        The Hydra overrides (``key=value``).
    deps : list of str
        Names of the jobs it needs (default none).
    meta : dict
        Description for the report (default empty).
    output : str
        Glob of the job's output, relative to its folder (default ``result.json``).
    """

    name: str
    stage: str
    entry: list[str]
    overrides: list[str]
    deps: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    output: str = "result.json"  # glob of the job's output, relative to its folder


# --------------------------------------------------------------------------------------------------------------
# Keys and markers
# --------------------------------------------------------------------------------------------------------------
def code_key(repo: Path = CODE_ROOT) -> str:
    """The content key of the code every job depends on: the fnet sources but the study's own runner and report,
    the entry points, and the configs but the study presets (file names and contents). A study report records it
    (``Code:``), and ``--compose`` compares it with this checkout's."""
    code = []
    conf = repo / "conf" if (repo / "conf").is_dir() else repo / "fnet" / "conf"  # an installed fnet: no ./conf
    scripts = list(repo.glob("*.py")) if conf.parent == repo else []  # an installed fnet: no analyze.py etc.
    for path in sorted(list((repo / "fnet").rglob("*.py")) + scripts + list(conf.rglob("*.yaml"))):
        if path.parent in (repo / "fnet" / "study", conf / "study"):
            continue
        code.append((str(path.relative_to(repo)), content_key(path.read_text())))
    return content_key(code)


def environment_parts(repo: Path = CODE_ROOT) -> dict:
    """What every job depends on besides its overrides, as content keys: ``code`` (:func:`code_key`), ``data``
    (the offline data files' names and bytes) and the torch / transformers versions. Contents, never modification
    times: a re-provisioned copy of the same data must not invalidate a study."""
    import torch  # only their versions: the planner (--dry-run) need not pay seconds to import them
    import transformers

    data_dir = Path(os.environ.get("FNET_DATA_DIR", repo.parent / "shared" / "data"))
    data = (
        sorted((str(f.relative_to(data_dir)), file_digest(f, memo=False)) for f in data_dir.rglob("*") if f.is_file())
        if data_dir.is_dir()
        else []
    )
    return {
        "code": code_key(repo),
        "data": content_key(data),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def environment_key(repo: Path = CODE_ROOT, parts: dict | None = None) -> str:
    """One content key of :func:`environment_parts` (``parts``: already computed, not read again)."""
    parts = parts or environment_parts(repo)
    return content_key(parts["code"], parts["data"], parts["torch"], parts["transformers"])


def machine() -> str:
    """The machine a run uses, in words (host, CPU model, the CPU kernels torch dispatches to, cores, GPU), for
    the report. Not part of any key: the same job on another machine is the same job, though its floating-point
    results may differ (fine-tuning on CPU is not bit-identical across CPUs; the kernel level, e.g. AVX2 or
    AVX512, is what torch's own CPU kernels are chosen by, and a CPU model name such as "AMD EPYC" does not
    say it)."""
    import platform

    import torch  # heavy: the runner process needs it only here, once per run

    from fnet.provenance import cpu_model  # imports torch, as above

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    kernels = torch.backends.cpu.get_cpu_capability()
    signature = cpu_signature()
    return (
        f"{platform.node()}: {cpu_model()} ({signature + ', ' if signature else ''}{kernels} kernels), "
        f"{os.cpu_count()} CPUs, {gpu}"
    )


def cpu_signature(cpuinfo: str | None = None) -> str:
    """The x86 CPU's family, model and stepping (``/proc/cpuinfo``), which tell microarchitectures apart where a
    VM's model name does not ("AMD EPYC" is several of them, with different floating-point results); "" elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    parts = [f"{k.removeprefix('cpu ')} {fields[k]}" for k in ("cpu family", "model", "stepping") if fields.get(k)]
    return " ".join(parts) if len(parts) == 3 else ""


def job_key(job: Job, overrides: list[str], input_digests: dict[str, str], env_key: str) -> str:
    """The content hash that names a job's folder."""
    return content_key(job.entry, overrides, input_digests, env_key)


def slug(name: str) -> str:
    """``name`` as a folder name: letters, digits and ``-_.`` kept, anything else ``_``.

    Parameters
    ----------
    name : str
        A job's name (``evaluate/sst2/lesion``).

    Returns
    -------
    str
        The folder-safe name (``evaluate_sst2_lesion``).
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def output_of(folder: Path, pattern: str) -> Path | None:
    """The one file of ``folder`` that matches the job's output ``pattern``, or None (none, or several)."""
    found = sorted(glob.glob(str(folder / pattern)))
    return Path(found[0]) if len(found) == 1 else None


def set_aside(folder: Path) -> Path:
    """Rename an unfinished job folder to ``<name>.interrupted-<time>`` (never over another), so its key's folder
    can be made anew; the new path."""
    aside = folder.with_name(f"{folder.name}.interrupted-{int(time.time())}")
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    folder.rename(aside)
    return aside


def _archived_files(folder: Path) -> dict[str, dict]:
    try:
        return json.loads((folder / ARCHIVED).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return {}


def finished_output(folder: Path, pattern: str) -> Path | None:
    """The job's output in ``folder`` (:func:`output_of`), or, in a folder archived without it, the path it had
    (listed in ``archived.json``, its digest kept there); None when neither."""
    found = output_of(folder, pattern)
    if found is not None:
        return found
    left_out = [name for name in _archived_files(folder) if fnmatch.fnmatchcase(name, pattern)]
    return folder / left_out[0] if len(left_out) == 1 else None


def output_digest(path: Path) -> str:
    """The digest of a job's output: of its bytes, or the one ``archived.json`` of its job folder kept for it."""
    path = Path(path)
    if path.exists():
        return file_digest(path)
    for folder in list(path.parents)[:4]:  # the job folder: an output lies at most a few folders deep in it
        entry = _archived_files(folder).get(path.relative_to(folder).as_posix())
        if entry is not None:
            return entry["digest"]
    raise FileNotFoundError(f"{path}: no such output, and no {ARCHIVED} of its job folder lists it")


def done_record(folder: Path, key: str, pattern: str) -> dict | None:
    """The job record of a finished job in ``folder`` with ``key``, or None. A folder archived without its output
    (:mod:`fnet.study.archive`) is finished too: its dependents keep their keys through the kept digest."""
    try:
        record = json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("status") != "done" or finished_output(folder, pattern) is None:
        return None
    return record
