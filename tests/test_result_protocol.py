"""Every result class of the package is checked against the result protocol, and there is one
``ConvergenceWarning`` (``deepquant.results``; the per-engine checks live in
``tests/result_protocol.py`` and the engines' test modules)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from deepquant.atomic import to_jsonable
from deepquant.mmot.colgen import ColgenResult
from deepquant.mmot.result import BoundsResult
from deepquant.results import ConvergenceWarning, result_dict, total_seconds, warn_failure
from tests.result_protocol import ResultProtocol

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "deepquant"


def _sources() -> list[Path]:
    """The package's modules under version control (a module not yet added is not checked),
    or every module where there is no git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--", "*.py"], cwd=SRC, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return sorted(SRC.rglob("*.py"))
    return [SRC / name for name in out] or sorted(SRC.rglob("*.py"))


def _result_classes() -> list[str]:
    names = set()
    for path in _sources():
        names.update(re.findall(r"^class (\w+Result)\b", path.read_text(), flags=re.M))
    return sorted(names)


def _checked_classes() -> set[str]:
    names = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^    result_type = (\w+)$", path.read_text(), flags=re.M))
    return names


def test_the_package_has_result_classes():
    assert {"BoundsResult", "BermudanResult", "CalibrationResult"} <= set(_result_classes())


# not the result of a solve: the demo job's bundle of every engine's results and its report
NOT_A_SOLVE = {"DemoResult"}


@pytest.mark.parametrize("name", [n for n in _result_classes() if n not in NOT_A_SOLVE])
def test_every_result_class_has_protocol_tests(name):
    """A ``ResultProtocol`` subclass with ``result_type = <name>`` exists in the tests."""
    assert name in _checked_classes(), (
        f"{name} has no protocol test: subclass tests.result_protocol.ResultProtocol")


def test_one_convergence_warning_class():
    """One definition in the package; every public name for it is that class."""
    definitions = [p for p in _sources()
                   if re.search(r"^class ConvergenceWarning\b", p.read_text(), flags=re.M)]
    assert len(definitions) == 1, definitions
    import deepquant.mmot as mmot
    from deepquant.mmot import augmented_entropic, entropic, incremental

    for mod in (mmot, augmented_entropic, entropic, incremental):
        assert mod.ConvergenceWarning is ConvergenceWarning
    assert issubclass(ConvergenceWarning, UserWarning)


def test_warn_failure_warns_only_on_failure():
    ok = BoundsResult(0.0, 1.0, "lp", "optimal", True, "both sides optimal", 0.5)
    bad = BoundsResult(math.nan, 1.0, "lp", "failed", False, "lower: HiGHS status 1", 0.5)
    with pytest.warns(ConvergenceWarning, match="^path LP: lower: HiGHS status 1$"):
        warn_failure(bad, "path LP")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_failure(ok, "path LP")


def test_bounds_result_takes_the_older_seconds_dict():
    """``seconds=dict(...)`` (per side) still constructs: the dict becomes ``timings`` and
    ``seconds`` their total (the sum, to rounding)."""
    res = BoundsResult(0.1, 0.2, "lp", "optimal", True, "ok",
                       dict(lower=1.0, upper=2.0, build=0.25))
    assert res.seconds == 3.25 and res.timings == {"lower": 1.0, "upper": 2.0, "build": 0.25}
    d = res.to_dict()
    assert d["seconds"] == 3.25 and d["timings"]["build"] == 0.25
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_result_dict_and_the_sanitizer():
    res = BoundsResult(math.nan, math.inf, "lp", "failed", False, "x", 1.0,
                       info={"big": list(range(3))})
    d = result_dict(res, skip=("info", "lower_side", "upper_side"), extra=1)
    assert d["lower"] is None and d["upper"] is None and d["extra"] == 1 and "info" not in d
    assert to_jsonable([res])[0]["status"] == "failed"      # nested results via to_dict
    assert math.isnan(total_seconds({})) and total_seconds({"a": 1.0, "b": math.nan}) == 1.0


class TestColgenResult(ResultProtocol):
    result_type = ColgenResult
    nit = True

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls):
        # the shape of the class is under test, so a hand-built instance of a converged solve
        return ColgenResult(value=1.0, u=None, residual=0.0, violation=0.0, nit=2, columns=10,
                            seconds=0.1, status="optimal", message="converged", lp_seconds=0.05)
