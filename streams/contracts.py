"""Machine-readable contracts generated from the pydantic models: JSON Schema per message."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from events.inbound import Event
from events.outbound import DeadLetter, HistoryRecord, SlaBreached, StageChanged
from lifecycle.policy import Policy

MESSAGES: dict[str, type[BaseModel]] = {
    "event": Event,
    "stage-changed": StageChanged,
    "sla-breached": SlaBreached,
    "history-record": HistoryRecord,
    "dead-letter": DeadLetter,
    "policy": Policy,
}


def json_schemas() -> dict[str, dict[str, object]]:
    return {name: model.model_json_schema(mode="serialization") for name, model in MESSAGES.items()}


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
