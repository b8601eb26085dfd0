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

from ledger_stream.codes import PRECEDENCE, Code, table
from ledger_stream.messages import SCHEMA_MODELS, WriterMessage

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
README = SCHEMA_DIR.parent / "README.md"
CODES_START, CODES_END = "<!-- codes -->\n", "<!-- /codes -->\n"

# Which topic carries which message (key, value); documented in each schema's description.
TOPICS = {
    "command": "<prefix>commands (key: account; value: one command or a JSON array of them)",
    "leg": "<prefix>legs (key: account; value: a JSON array of legs of one partition)",
    "result": "<prefix>results (key: command_id)",
    "journal_event": "<prefix>journal (key: entry_id; compacted)",
    "account_state": "inside <prefix>state records (accounts, by account name)",
    "outcome": "inside <prefix>state records (outcomes, by cmd:<id>, leg:credit:<id>, "
    "inv:<payer>|<invoice_id> or rev:<id>); compact ones on <prefix>outcomes",
    "state_record": "<prefix>state (one record per commit or claim; never compacted)",
    "receipt": "<prefix>receipts (key: invoice_id; on the payer's partition; compacted)",
    "code": "result.code of <prefix>results: every rejection code, its precedence and reason",
}


def code_schema() -> dict[str, Any]:
    """The rejection codes: lowest precedence first applies (0: intake, before deciding)."""
    return {
        "type": "string",
        "oneOf": [
            {"const": code.value, "description": code.reason, "x-precedence": PRECEDENCE[code]}
            for code in Code
        ],
    }


def render() -> dict[str, str]:
    """File name -> JSON text of each schema."""
    files = {}
    for name, model in {**SCHEMA_MODELS, "code": Code}.items():
        schema: dict[str, Any] = (
            code_schema()
            if model is Code
            else msgspec.json.schema(model)
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


def with_codes_table(readme: str) -> str:
    """The README with its table of rejection codes rendered from `ledger_stream.codes`."""
    start = readme.index(CODES_START) + len(CODES_START)
    return readme[:start] + table() + readme[readme.index(CODES_END, start) :]


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    README.write_text(with_codes_table(README.read_text()))
    written = [README]
    for file_name, text in render().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    sys.exit(0)
