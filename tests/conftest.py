"""Shared fixtures.

`shared_data` is the folder of real ILSVRC2012 fixtures, `../shared/data` beside the repository; tests that
need it skip where it is absent. The environment variable IMGNET_SHARED_DATA points it elsewhere:
`IMGNET_SHARED_DATA=/nonexistent pytest tests` runs the suite as a fresh clone of the public repository
does, with every real-image test skipped and the layout tests on generated images only.

`ilsvrc` is a folder of that shape, generated (tests/fixtures.py) and real: a layout test that takes it runs
on both. `ilsvrc_once` is one folder, the real one where present: for the slow tests, run once.
"""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("IMGNET_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def _have_shared_data() -> bool:
    return (SHARED_DATA / "devkit_t12" / "data" / "meta.mat").is_file()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ILSVRC2012 fixtures (../shared/data); tests that need them skip where the folder is absent."""
    if not _have_shared_data():
        pytest.skip(f"real ILSVRC2012 fixtures not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", params=["generated", "real"])
def ilsvrc(request, tmp_path_factory) -> Path:
    """A folder shaped as ../shared/data, once per kind: "generated" (tests/fixtures.py: the same paths, file
    names and labels, synthetic pictures; runs everywhere) and "real" (the `shared_data` fixture: skips where
    the folder is absent). A layout test that takes it runs on both."""
    if request.param == "real":
        return request.getfixturevalue("shared_data")
    from fixtures import fixture_tree

    return fixture_tree(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def ilsvrc_once(tmp_path_factory) -> Path:
    """The real folder where present, else the generated one: for the slow tests (kill -9 and resume, end to
    end), which run once, so that the real folder does not double their time."""
    if _have_shared_data():
        return SHARED_DATA
    from fixtures import fixture_tree

    return fixture_tree(tmp_path_factory.getbasetemp())
