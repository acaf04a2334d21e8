"""What some tests need from the machine beyond the venv: Debian's PostgreSQL binaries (the outage and
fleet tests, tests/pg_server.py), Chromium and Playwright (the playground's browser tests).

On a developer machine a test whose need is missing skips and says why. Under CI (the environment
variable `CI` set to `true`, as CI systems and `.ci/run` set it) it fails instead, with the same reason:
a CI run whose servers went missing must not pass quietly with those tests skipped.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import pytest

__all__ = ["Verdict", "in_ci", "need", "need_module", "verdict"]

#: what a test run under CI says after the reason a need is missing
CI_NOTE = "CI=true: a missing requirement fails the run instead of skipping its tests"


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run is CI's: `CI` is `true` (or `1`, `yes`), as CI systems and `.ci/run` set it."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Verdict:
    """What to do with a test: `run` it, `skip` it or `fail` it, and why (empty when it runs)."""

    action: Literal["run", "skip", "fail"]
    reason: str = ""


def verdict(missing: str | None, ci: bool) -> Verdict:
    """The decision: nothing `missing` (None) runs the test; a missing need (why, in words) skips it on a
    developer machine and fails it under CI."""
    if missing is None:
        return Verdict("run")
    if ci:
        return Verdict("fail", f"{missing} ({CI_NOTE})")
    return Verdict("skip", missing)


def need(missing: str | None, environ: Mapping[str, str] = os.environ) -> None:
    """In a fixture or a test: go on when nothing is `missing`, else skip (pytest.skip) or, under CI,
    fail (pytest.fail) with the reason."""
    decided = verdict(missing, in_ci(environ))
    if decided.action == "fail":
        pytest.fail(decided.reason, pytrace=False)
    if decided.action == "skip":
        pytest.skip(decided.reason)


def need_module(name: str, reason: str) -> ModuleType:
    """`pytest.importorskip(name)` that fails under CI: usable at a module's top level (there a failure is
    a collection error, which fails the run too)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        decided = verdict(f"{reason} ({exc})", in_ci())
        if decided.action == "fail":
            pytest.fail(decided.reason, pytrace=False)
        pytest.skip(decided.reason, allow_module_level=True)
