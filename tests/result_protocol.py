"""The shared checks of the result protocol (``deepquant.results``).

``check_result(res)`` checks one result object. A test class per engine result subclasses
``ResultProtocol``, names the class in ``result_type`` and provides a ``result`` fixture (and, where
a failure is cheap to provoke, ``failure``: a zero-argument callable whose solve returns
``success=False``); it inherits the common tests. ``tests/test_result_protocol.py`` checks that
every ``class ...Result`` of the package has such a subclass.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from deepquant.results import ConvergenceWarning, Result


def check_result(res, *, nit: bool | None = None) -> None:
    """Assert that ``res`` follows the protocol. ``nit``: True / False to require / forbid an
    iteration count, None when either is fine."""
    assert isinstance(res, Result), f"{type(res).__name__} lacks a protocol attribute"
    assert type(res.success) is bool, f"success must be a bool, got {type(res.success)}"
    assert isinstance(res.status, str) and res.status, f"status must be a str code: {res.status!r}"
    assert " " not in res.status, f"status must be a short code without spaces: {res.status!r}"
    assert isinstance(res.message, str), f"message must be a str, got {type(res.message)}"
    assert isinstance(res.seconds, float), f"seconds must be a float, got {type(res.seconds)}"
    assert math.isnan(res.seconds) or res.seconds >= 0.0
    if hasattr(res, "timings"):
        assert isinstance(res.timings, dict)
    if nit is True:
        assert isinstance(res.nit, int) and res.nit >= 0, f"nit: {getattr(res, 'nit', None)!r}"
    elif nit is False:
        assert not hasattr(res, "nit")
    assert dataclasses.is_dataclass(res) and type(res).__dataclass_params__.frozen, (
        f"{type(res).__name__} must be a frozen dataclass")
    d = res.to_dict()
    assert isinstance(d, dict)
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN, no infinities, no arrays
    back = json.loads(text)
    for key in ("success", "status", "message", "seconds"):
        assert key in back, f"to_dict() lacks {key!r}"
    assert back["success"] is res.success and back["status"] == res.status
    if hasattr(res, "nit"):
        assert back["nit"] == res.nit


class ResultProtocol:
    """Base of the per-engine protocol tests (not collected itself: no ``Test`` prefix)."""

    result_type: type
    nit: bool | None = None  # True where the method iterates

    def test_result_follows_the_protocol(self, result):
        assert isinstance(result, self.result_type)
        check_result(result, nit=self.nit)

    def test_result_is_frozen(self, result):
        name = dataclasses.fields(result)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, name, getattr(result, name))

    def test_failure_warns_and_says_so(self, failure):
        if failure is None:
            pytest.skip("no cheap way to make this solve fail")
        with pytest.warns(ConvergenceWarning):
            res = failure()
        assert res.success is False and res.message
        check_result(res, nit=self.nit)

    @pytest.fixture
    def failure(self):
        return None
