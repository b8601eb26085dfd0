"""The examples in the docstrings run and say what they show."""

import doctest
from types import ModuleType

import pytest

from ledger_stream import logs, money, partitioning


@pytest.mark.parametrize("module", [logs, money, partitioning], ids=lambda m: m.__name__)
def test_docstring_examples_hold(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0
