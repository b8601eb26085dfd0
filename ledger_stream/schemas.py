"""JSON Schemas of every message on every topic, generated from the models (pydantic for
commands, msgspec for what the writers make).

`python -m ledger_stream.schemas` rewrites `schemas/`; a test fails when the files drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
from pydantic import TypeAdapter

from ledger_stream.messages import SCHEMA_MODELS, WriterMessage

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

# Which topic carries which message (key, value); documented in each schema's description.
TOPICS = {
    "command": "<prefix>commands (key: account; value: one command or a JSON array of them)",
    "leg": "<prefix>legs (key: account; value: a JSON array of legs of one partition)",
    "result": "<prefix>results (key: command_id)",
    "journal_event": "<prefix>journal (key: entry_id; compacted)",
    "account_state": "inside <prefix>state records (accounts, by account name)",
    "outcome": "inside <prefix>state records (outcomes, by cmd:<id> or leg:credit:<id>)",
    "state_record": "<prefix>state (one record per commit or claim; never compacted)",
}


def render() -> dict[str, str]:
    """File name -> JSON text of each schema."""
    files = {}
    for name, model in SCHEMA_MODELS.items():
        schema: dict[str, Any] = (
            msgspec.json.schema(model)
            if isinstance(model, type) and issubclass(model, WriterMessage)
            else TypeAdapter(model).json_schema()
        )
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"ledger_stream/{name}.json",
            "x-topic": TOPICS[name],
            **schema,
        }
        files[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    sys.exit(0)
