import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data folder (../shared/data beside the repo); tests needing it skip only when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} is absent (set FNET_DATA_DIR to run these tests)")
    return SHARED_DATA


@pytest.fixture()
def fnet_cache(tmp_path, monkeypatch) -> Path:
    """An isolated fnet cache (models, activations, networks) per test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FNET_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (slow tests only)."""
    from fnet.models import load_model

    return load_model("smollm2_135m")
