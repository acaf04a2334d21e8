"""tests/needs.py: a test whose server or browser is missing skips on a developer machine and fails under
CI (CI=true), so that CI cannot go green with the outage, fleet or playground tests skipped."""

from __future__ import annotations

import pytest

from tests import needs

MISSING = "needs Debian's PostgreSQL binaries (initdb, pg_ctl, postgres)"


def test_nothing_missing_runs_the_test_in_ci_and_out() -> None:
    assert needs.verdict(None, ci=False) == needs.Verdict("run", "")
    assert needs.verdict(None, ci=True) == needs.Verdict("run", "")


def test_something_missing_skips_on_a_developer_machine_with_the_reason() -> None:
    assert needs.verdict(MISSING, ci=False) == needs.Verdict("skip", MISSING)


def test_something_missing_fails_under_ci_with_the_reason_and_why_it_is_not_skipped() -> None:
    decided = needs.verdict(MISSING, ci=True)
    assert decided.action == "fail"
    assert decided.reason.startswith(MISSING) and "CI=true" in decided.reason


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CI": "true"}, True),
        ({"CI": "True"}, True),
        ({"CI": "1"}, True),
        ({"CI": "yes"}, True),
        ({}, False),
        ({"CI": ""}, False),
        ({"CI": "false"}, False),
        ({"CI": "0"}, False),
    ],
)
def test_ci_is_the_ci_variable_set_to_true(environ: dict[str, str], expected: bool) -> None:
    assert needs.in_ci(environ) is expected


def test_need_fails_under_ci_and_skips_elsewhere() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"Debian's PostgreSQL.*CI=true"):
        needs.need(MISSING, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="Debian's PostgreSQL"):
        needs.need(MISSING, {})
    needs.need(None, {"CI": "true"})  # nothing missing: the test goes on


def test_a_missing_module_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no such module.*CI=true"):
        needs.need_module("picserve_no_such_module", "no such module")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no such module"):
        needs.need_module("picserve_no_such_module", "no such module")
    assert needs.need_module("json", "the standard library").dumps([]) == "[]"


def test_a_generation_needs_its_control_models_once_each():
    from picserve import domain

    units = tuple(domain.ControlUnit(model_code=c) for c in ("xl-canny", "ip-adapter", "xl-canny"))
    spec = domain.GenerationSpec(model_code="m", prompt="", control_units=units)
    assert spec.needs().controls == ("xl-canny", "ip-adapter")
    back = domain.spec_from_json("generation", 2, spec.to_dict())
    assert back == spec and isinstance(back.control_units[0], domain.ControlUnit)
    old = {k: v for k, v in spec.to_dict().items() if not k.startswith(("control", "return_control"))}
    assert domain.spec_from_json("generation", 1, old).control_units == ()  # a version-1 row
