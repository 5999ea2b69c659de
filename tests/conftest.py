import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def smol():
    """The embedded real model (SmolLM2-135M-Instruct), loaded once per test session."""
    import steerlab

    return steerlab.load_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def artifacts_dir() -> Path:
    d = Path(os.environ.get("STEERLAB_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d
