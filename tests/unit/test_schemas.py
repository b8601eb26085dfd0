"""The published JSON Schemas match the pydantic models they come from."""

from ledger_stream.schemas import SCHEMA_DIR, render


def test_schema_files_match_the_models() -> None:
    expected = render()
    on_disk = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/ drifted from the models (stale: {stale}, unknown: {extra}); "
        "run `make schemas` and commit the result"
    )
