"""The published JSON Schemas match the pydantic models they come from."""

from pathlib import Path
from typing import get_args, get_type_hints

import ledger_stream
from ledger_stream.codes import Code
from ledger_stream.messages import JournalEvent
from ledger_stream.schemas import README, SCHEMA_DIR, render, with_codes_table


def test_schema_files_match_the_models() -> None:
    expected = render()
    on_disk = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/ drifted from the models (stale: {stale}, unknown: {extra}); "
        "run `make schemas` and commit the result"
    )


def test_the_readme_lists_every_rejection_code_as_the_codes_module_has_it() -> None:
    readme = README.read_text()
    assert with_codes_table(readme) == readme, (
        "the README's table of rejection codes drifted from ledger_stream/codes.py; "
        "run `make schemas` and commit the result"
    )
    for code in Code:
        assert f"`{code.value}`" in readme


def test_no_module_but_codes_spells_a_code_out() -> None:
    """Every code is `Code.<NAME>` outside ledger_stream/codes.py (tests and docs aside);
    three journal event kinds share their names with codes."""
    kinds = set(get_args(get_type_hints(JournalEvent)["kind"]))
    package = Path(ledger_stream.__file__).parent
    spelled = []
    for path in [*package.rglob("*.py"), *(package.parent / "agents").rglob("*.py")]:
        if path.name == "codes.py":
            continue
        text = path.read_text()
        spelled += [
            f"{path.name}: {c.value}"
            for c in Code
            if f'"{c.value}"' in text and c.value not in kinds
        ]
    assert not spelled
