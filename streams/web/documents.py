"""Machine-readable contracts generated from the pydantic models.

`leadflow schema --out docs` writes a JSON Schema per message, an AsyncAPI document for the
topics and an OpenAPI document for the HTTP API; `tests/unit/test_docs_current.py` fails when
the checked-in copies in `docs/` fall behind the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from events.inbound import Event
from events.outbound import (
    DeadLetter,
    HistoryRecord,
    PersonAliased,
    SlaBreached,
    StageChanged,
)
from events.wire import RFC3339
from lifecycle.policy import Policy
from streams.web.contracts import (
    MAX_MIN_MQLS,
    RECENT_DEFAULT,
    RECENT_MAX,
    Accepted,
    AliasView,
    CalibrationReport,
    CohortsReport,
    FunnelView,
    PersonHistory,
    PersonView,
    PolicyRow,
    Problem,
)

MESSAGES: dict[str, type[BaseModel]] = {
    "event": Event,
    "stage-changed": StageChanged,
    "sla-breached": SlaBreached,
    "history-record": HistoryRecord,
    "dead-letter": DeadLetter,
    "policy": Policy,
    "person-aliased": PersonAliased,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema(mode="serialization") for name, model in MESSAGES.items()}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _components(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """Every model's schema, with nested $defs lifted into components."""
    schemas: dict[str, Any] = {}
    for name, model in models.items():
        schema = model.model_json_schema(
            mode="serialization", ref_template="#/components/schemas/{model}"
        )
        for sub, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(sub, definition)
        schemas[name] = schema
    return schemas


def openapi() -> dict[str, Any]:
    def scoped(scope: str) -> list[dict[str, list[str]]]:
        # OpenAPI 3.1: a non-OAuth scheme's requirement may list the roles it needs.
        return [{"bearer": [scope]}]

    ok = "application/json"

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {ok: {"schema": schema}}}

    problem = answer("problem", _ref("Problem"))
    refusals = {
        "401": answer("no token, or one the worker does not know", _ref("Problem")),
        "403": answer("the token lacks the scope", _ref("Problem")),
        "503": answer("the worker has no tokens configured", _ref("Problem")),
    }
    person_param = {
        "name": "person_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadflow API",
            "version": "1",
            "description": "Person state and timeline (bearer token), funnel, policies, ingest.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A named token with scopes: `read` (persons, timelines, "
                    "recent changes), `ingest` (POST /events), `admin` (erasure). 401 without "
                    "a known token, 403 when it lacks the scope, 503 when the worker has no "
                    "tokens configured.",
                }
            },
            "schemas": _components(
                {
                    "Event": Event,
                    "PersonView": PersonView,
                    "AliasView": AliasView,
                    "PersonHistory": PersonHistory,
                    "FunnelView": FunnelView,
                    "CalibrationReport": CalibrationReport,
                    "CohortsReport": CohortsReport,
                    "PolicyRow": PolicyRow,
                    "Accepted": Accepted,
                    "Problem": Problem,
                    "StageChanged": StageChanged,
                }
            ),
        },
        "paths": {
            "/people/{person_id}": {
                "get": {
                    "summary": "Current stage, highest stage, entered-at, sources, temperature",
                    "security": scoped("read"),
                    "parameters": [person_param],
                    "responses": {
                        "200": answer(
                            "the person, or whom an id was merged into",
                            {"oneOf": [_ref("PersonView"), _ref("AliasView")]},
                        ),
                        **refusals,
                        "404": problem,
                    },
                }
            },
            "/people/{person_id}/history": {
                "get": {
                    "summary": "Ordered history with every decision's rule, sentence, policy",
                    "security": scoped("read"),
                    "parameters": [
                        person_param,
                        {
                            "name": "as_of",
                            "in": "query",
                            "required": False,
                            "description": "an RFC 3339 time with a time zone; anything else "
                            "(also an empty value) is answered 422",
                            "schema": {"type": "string", "format": "date-time", "pattern": RFC3339},
                        },
                    ],
                    "responses": {
                        "200": answer("the timeline", _ref("PersonHistory")),
                        **refusals,
                        "404": problem,
                        "422": problem,
                    },
                }
            },
            "/changes/recent": {
                "get": {
                    "summary": "The most recent stage changes, newest first",
                    "security": scoped("read"),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": "how many, newest first; a value that is not a "
                            f"whole number from 1 to {RECENT_MAX} (also `null`) is answered 422",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": RECENT_MAX,
                                "default": RECENT_DEFAULT,
                            },
                        }
                    ],
                    "responses": {
                        "200": answer("changes", {"type": "array", "items": _ref("StageChanged")}),
                        **refusals,
                        "422": problem,
                    },
                }
            },
            "/funnel": {
                "get": {
                    "summary": "Counts per stage and conversion by lead source (live or shadow)",
                    "parameters": [
                        {
                            "name": "policy",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": answer("the funnel", _ref("FunnelView")), "404": problem},
                }
            },
            "/reports/calibration": {
                "get": {
                    "summary": "Measured vs configured conversion per lead source, the proposed "
                    "policy, its diff and what-if (from the whole history topic)",
                    "parameters": [
                        {
                            "name": "min_mqls",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_MIN_MQLS,
                                "default": 30,
                            },
                        },
                        {
                            "name": "maturity",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["seed", "growth", "mature"]},
                        },
                    ],
                    "responses": {
                        "200": answer("the calibration", _ref("CalibrationReport")),
                        "422": problem,
                    },
                }
            },
            "/reports/cohorts": {
                "get": {
                    "summary": "Cohort funnels as reported and restated, time in stage",
                    "parameters": [
                        {
                            "name": "period",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["month", "week"]},
                        },
                        {
                            "name": "by",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "enum": ["source", "first_touch", "last_touch", "touches"],
                            },
                        },
                    ],
                    "responses": {
                        "200": answer("the cohorts", _ref("CohortsReport")),
                        "422": problem,
                    },
                }
            },
            "/policies": {
                "get": {
                    "summary": "Policy versions in use (active and shadow)",
                    "responses": {
                        "200": answer("policies", {"type": "array", "items": _ref("PolicyRow")})
                    },
                }
            },
            "/policies/{version}": {
                "get": {
                    "summary": "One policy version with its full definition",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "the policy"}, "404": problem},
                }
            },
            "/events": {
                "post": {
                    "summary": "Ingest one event for systems that cannot speak Kafka",
                    "description": "Needs the `ingest` scope; a `person_erased` event also "
                    "needs `admin` (403 otherwise).",
                    "security": scoped("ingest"),
                    "requestBody": {"required": True, "content": {ok: {"schema": _ref("Event")}}},
                    "responses": {
                        "202": answer("accepted", _ref("Accepted")),
                        **refusals,
                        "413": problem,
                        "422": problem,
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text"}},
                }
            },
        },
    }


def asyncapi() -> dict[str, Any]:
    def channel(topic: str, message: str, description: str) -> dict[str, Any]:
        return {
            "address": topic,
            "description": description + " Key: person id (policy hash for policies).",
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }

    models = {
        "Event": Event,
        "StageChanged": StageChanged,
        "HistoryRecord": HistoryRecord,
        "DeadLetter": DeadLetter,
        "Policy": Policy,
        "PersonAliased": PersonAliased,
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "leadflow topics", "version": "1"},
        "channels": {
            "events": channel("leadflow.events", "Event", "Inbound engagement and sales feedback."),
            "stageChanges": channel(
                "leadflow.stage-changes", "StageChanged", "Every move, for sales tools."
            ),
            "history": channel(
                "leadflow.history", "HistoryRecord", "The event store, kept forever."
            ),
            "deadLetters": channel(
                "leadflow.dead-letters", "DeadLetter", "Anything rejected, with the reason."
            ),
            "policies": channel("leadflow.policies", "Policy", "Every policy version used."),
            "aliases": channel(
                "leadflow.aliases",
                "PersonAliased",
                "Ids merged into another person, compacted: the latest record per alias names "
                "its survivor.",
            ),
        },
        "operations": {
            "receiveEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"}},
            "sendStageChanges": {"action": "send", "channel": {"$ref": "#/channels/stageChanges"}},
            "sendHistory": {"action": "send", "channel": {"$ref": "#/channels/history"}},
            "sendDeadLetters": {"action": "send", "channel": {"$ref": "#/channels/deadLetters"}},
            "sendPolicies": {"action": "send", "channel": {"$ref": "#/channels/policies"}},
            "sendAliases": {"action": "send", "channel": {"$ref": "#/channels/aliases"}},
        },
        "components": {
            "messages": {
                name: {"name": name, "contentType": "application/json", "payload": _ref(name)}
                for name in models
            },
            "schemas": _components(models),
        },
    }


def documents() -> dict[str, Any]:
    """Every generated document, by its path relative to the output directory."""
    docs: dict[str, Any] = {f"schemas/{n}.schema.json": s for n, s in json_schemas().items()}
    docs["openapi.json"] = openapi()
    docs["asyncapi.json"] = asyncapi()
    return docs


def render(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    written = []
    for relative, document in documents().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written
