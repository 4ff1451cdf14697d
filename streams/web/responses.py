"""JSON answers and bodies, shared by every view."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from streams.worker.outputs import to_json

JSON = "application/json"


def json_response(view: View, data: Any, status: int = 200) -> Response:
    return view.bytes(to_json(data), content_type=JSON, status=status)


def problem_response(view: View, status: int, message: str, **extra: Any) -> Response:
    return json_response(view, {"error": message, **extra}, status)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes.

    One `content.read(n)` returns only what has arrived so far (a body sent in chunks, or
    in several TCP segments, came back cut short and was answered 422 as broken JSON).
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None
