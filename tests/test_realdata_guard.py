"""The real-data guard in conftest.py: a skipped ``realdata`` test fails when the data exists.

The decision is unit-tested, and the hooks themselves run in an inner pytest session
(``pytester``) whose conftest loads tests/conftest.py with ``CAMVID`` pointed at a folder that
exists or not.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().with_name("conftest.py")


def _conftest_module():
    spec = importlib.util.spec_from_file_location("_segtune_conftest_copy", CONFTEST)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("camvid_exists", [False, True])
@pytest.mark.parametrize("skipped", [False, True])
@pytest.mark.parametrize("realdata", [False, True])
def test_decision_fails_only_a_skipped_realdata_test_with_data_present(
    camvid_exists: bool, skipped: bool, realdata: bool
) -> None:
    decide = _conftest_module()._realdata_skip_is_failure
    assert decide(camvid_exists=camvid_exists, skipped=skipped, realdata=realdata) is (
        camvid_exists and skipped and realdata
    )


INNER_TESTS = '''
import pytest


@pytest.fixture
def camvid_small():  # stands in for the real fixture: skips like it does without data
    pytest.skip("no camvid here")


@pytest.mark.realdata
def test_marked_skip_in_body():
    pytest.skip("data missing")


@pytest.mark.realdata
@pytest.mark.skipif(True, reason="data missing (skipif)")
def test_marked_skipif():
    pass


def test_uses_camvid_fixture(camvid_small):  # marked realdata by the collection hook
    pass


def test_unmarked_skip():
    pytest.skip("unrelated skip")


@pytest.mark.realdata
def test_marked_passes():
    pass


@pytest.mark.realdata
@pytest.mark.xfail(reason="known", strict=True)
def test_marked_xfail():
    raise AssertionError
'''


def _run_inner(pytester: pytest.Pytester, camvid: Path) -> pytest.RunResult:
    pytester.makeconftest(
        f"""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_segtune_conftest_inner", {str(CONFTEST)!r})
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_mod.CAMVID = Path({str(camvid)!r})
pytest_collection_modifyitems = _mod.pytest_collection_modifyitems
pytest_runtest_makereport = _mod.pytest_runtest_makereport
"""
    )
    pytester.makeini("[pytest]\nmarkers =\n    realdata: needs real data\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA")


def test_without_data_realdata_tests_skip_and_nothing_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    result = _run_inner(pytester, tmp_path / "absent" / "camvid")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_with_data_a_skipped_realdata_test_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    camvid = tmp_path / "camvid"
    camvid.mkdir()
    result = _run_inner(pytester, camvid)
    # the three realdata skips fail: in the body (a failure), by skipif and by the auto-marked
    # fixture (setup: pytest lists them as errors); the unmarked skip stays a skip, the xfail
    # stays an xfail, and the session exits non-zero
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    assert "FAILED test_inner.py::test_marked_skip_in_body" in text, text
    assert "ERROR test_inner.py::test_marked_skipif" in text, text
    assert "ERROR test_inner.py::test_uses_camvid_fixture" in text, text
    assert "SKIPPED" in text and "unrelated skip" in text
    assert f"realdata test skipped although {camvid} exists (data missing (skipif))" in text
    assert "do not skip" in text
