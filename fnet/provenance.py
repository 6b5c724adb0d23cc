"""What every result file records about how it was made: :func:`provenance` (fnet version and code hash, torch,
Python, host, time) and :func:`cpu_model` (benchmarks name the machine they ran on)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fnet.cache import code_version
from fnet.version import __version__

__all__ = ["cpu_model", "provenance"]


def cpu_model() -> str:
    """The CPU's model name (benchmarks describe the machine they ran on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def provenance(**fields: Any) -> dict:
    """A result file's provenance: what the caller gives plus fnet version, ``fnet_code`` (a hash of every fnet
    source file, :func:`fnet.cache.code_version` of ``fnet``: the version number alone does not change with the code),
    torch version, host and time."""
    return dict(
        fields,
        fnet_version=__version__,
        fnet_code=code_version("fnet"),
        torch_version=torch.__version__,
        python=platform.python_version(),
        host=platform.node(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        cuda=torch.cuda.is_available(),
        pid=os.getpid(),
    )
