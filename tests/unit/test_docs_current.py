"""The checked-in contracts in docs/ are what the models generate today."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.web.documents import documents, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("relative", sorted(documents()))
def test_checked_in_document_matches_the_models(relative: str):
    path = DOCS / relative
    assert path.exists(), f"{path} missing: run `leadflow schema --out docs`"
    assert path.read_text(encoding="utf-8") == render(documents()[relative]), (
        f"{path} is stale: run `leadflow schema --out docs` and commit"
    )


def test_openapi_marks_personal_endpoints_with_the_scope_they_need():
    paths = documents()["openapi.json"]["paths"]
    for path in ("/people/{person_id}", "/people/{person_id}/history", "/changes/recent"):
        assert paths[path]["get"]["security"] == [{"bearer": ["read"]}]
        assert {"401", "403"} <= set(paths[path]["get"]["responses"])
    assert paths["/events"]["post"]["security"] == [{"bearer": ["ingest"]}]
    assert "403" in paths["/events"]["post"]["responses"]
    assert "security" not in paths["/funnel"]["get"]
