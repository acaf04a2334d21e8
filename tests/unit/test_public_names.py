"""Every module that states its public surface does so in a sorted `__all__` of real names (design rule 9)."""

import importlib
import pkgutil

import pytest

import picserve

# engine and translation modules import torch or load libraries: checked where those load (models tier)
_HEAVY = ("picserve.engine.", "picserve.translate.")
_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(picserve.__path__, "picserve.") if m.name != "picserve.__main__"
)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.models) if n.startswith(_HEAVY) else n for n in _MODULES]
)
def test_all_is_sorted_and_real(name):
    module = importlib.import_module(name)
    names = list(getattr(module, "__all__", ()))
    assert names == sorted(names, key=_isort_order), f"{name}.__all__ is not sorted"
    assert [n for n in names if not hasattr(module, n)] == []


def _isort_order(name: str) -> tuple[int, str]:
    """CONSTANTS, then Classes, then functions, each alphabetical (isort's and ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)
