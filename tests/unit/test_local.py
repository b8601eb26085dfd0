"""The working directory of a local run: gone after a good run, kept after a bad one."""

from __future__ import annotations

import pytest

from ledger_stream.local import RunDirectory


def test_a_good_run_leaves_no_directory() -> None:
    with RunDirectory("ledger-test-") as run:
        (run.path / "worker0.log").write_text("fine")
    assert not run.path.exists()


def test_a_run_marked_failed_keeps_its_directory_and_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RunDirectory("ledger-test-") as run:
        (run.path / "worker0.log").write_text("what went wrong")
        run.failed = True
    try:
        assert (run.path / "worker0.log").read_text() == "what went wrong"
        assert str(run.path) in caplog.text
    finally:
        (run.path / "worker0.log").unlink()
        run.path.rmdir()


def test_a_run_that_raised_keeps_its_directory() -> None:
    with pytest.raises(RuntimeError), RunDirectory("ledger-test-") as run:
        raise RuntimeError("bug")
    try:
        assert run.path.is_dir()
    finally:
        run.path.rmdir()


def test_an_interrupted_run_keeps_its_directory_only_when_asked() -> None:
    with pytest.raises(KeyboardInterrupt), RunDirectory("ledger-test-") as plain:
        raise KeyboardInterrupt
    assert not plain.path.exists()
    asked = RunDirectory("ledger-test-", keep_interrupted=True)
    with pytest.raises(KeyboardInterrupt), asked as kept:
        raise KeyboardInterrupt
    try:
        assert kept.path.is_dir()
    finally:
        kept.path.rmdir()
