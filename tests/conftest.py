from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ILSVRC2012 fixtures (../shared/data); tests that need them skip where the folder is absent."""
    if not (SHARED_DATA / "devkit_t12" / "data" / "meta.mat").is_file():
        pytest.skip(f"real ILSVRC2012 fixtures not found at {SHARED_DATA}")
    return SHARED_DATA
