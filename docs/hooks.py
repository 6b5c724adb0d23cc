"""MkDocs hooks (``mkdocs.yml``: ``hooks``): pages generated at build time, so none of them can drift.

* ``reference/config.md``: the configuration reference, from the schemas and YAML files (``docs/config_reference.py``);
* ``api/fnet.md``: the top-level API, one entry per name of ``fnet.__all__`` (from ``fnet._API``);
* ``reports/``: every committed study report (``results/*/report.md``, with its figures and tables);
* ``tutorials/*.ipynb``: replaced by their executed copies (``docs/notebooks.py``; executed here when the tests
  have not already done it for this code). ``FNET_DOCS_EXECUTE=0`` renders them without outputs instead (a quick
  local build; CI never sets it).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def _paths() -> None:
    """This checkout's fnet (whichever fnet the environment has installed) and docs/ helpers first on sys.path."""
    for path in (str(ROOT / "docs"), str(ROOT)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


log = logging.getLogger("mkdocs.hooks.fnet")


def _api_page() -> str:
    import fnet

    lines = [
        "# fnet",
        "",
        "The public names of `import fnet` (`help(fnet)` lists them too). Each is defined in a stage "
        "package, documented there as well.",
        "",
        "::: fnet",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "",
    ]
    for name in sorted(fnet._API):
        lines += [f"::: {fnet._API[name]}.{name}", "    options:", "      heading_level: 2", ""]
    return "\n".join(lines)


def _reports_index(reports: list[Path]) -> str:
    lines = [
        "# Study reports",
        "",
        "The committed results of `fnet study` runs (`results/*/report.md` in the repository), each with its "
        "machines, settings, every job's score and the effects against the random controls.",
        "",
    ]
    for report in reports:
        title = report.read_text().splitlines()[0].lstrip("# ").strip()
        lines.append(f"- [{report.parent.name}]({report.parent.name}/report.md): {title}")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    """Add the generated pages and the study reports; swap the tutorials for their executed copies."""
    _paths()
    import config_reference
    import notebooks

    files.append(File.generated(config, "reference/config.md", content=config_reference.render()))
    files.append(File.generated(config, "api/fnet.md", content=_api_page()))
    reports = sorted((ROOT / "results").glob("*/report.md"))
    files.append(File.generated(config, "reports/index.md", content=_reports_index(reports)))
    for report in reports:
        for path in sorted(report.parent.iterdir()):
            if path.suffix in (".md", ".png", ".csv"):
                files.append(
                    File.generated(config, f"reports/{report.parent.name}/{path.name}", abs_src_path=str(path))
                )
    if os.environ.get("FNET_DOCS_EXECUTE", "1") == "0":
        return files
    for name in notebooks.names():
        uri = f"tutorials/{name}.ipynb"
        old = files.get_file_from_path(uri)
        if old is not None:
            files.remove(old)
        path = notebooks.executed(name)
        log.info("tutorial %s: executed copy %s", name, path)
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
