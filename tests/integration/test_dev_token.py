"""`leadflow dev` for a newcomer: a random all-scope token when none is set, and a dashboard
link that signs in with a second, read-only token."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from streams.dev.broker import free_port
from tests.integration.test_tools import Lines

pytestmark = pytest.mark.integration


def _get(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _post(url: str, token: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_dev_generates_a_token_and_prints_a_signed_in_dashboard_link(tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "streams.cli", "dev", "--no-demo", "--web-port", str(port)]
    command += ["--data-dir", str(tmp_path / "dev")]
    env = {k: v for k, v in os.environ.items() if k != "LEADFLOW_API_TOKEN"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env
    )
    out = Lines(proc)
    try:
        await out.wait_for(r"leadflow dev is up", 90)
        link = await out.wait_for(r"dashboard\s+(http://127\.0\.0\.1:(\d+)/#token=(\S+))", 2)
        token = (
            await out.wait_for(r"^\s+token\s+(\S+)\s+\(every scope; generated for this session", 2)
        )[1]
        dashboard = urllib.parse.unquote(link[3])
        assert len(token) >= 20 and len(dashboard) >= 20 and int(link[2]) == port
        assert dashboard != token  # the dashboard signs in with its own, read-only token
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(_get, f"{base}/changes/recent", token) == 200
        assert await asyncio.to_thread(_get, f"{base}/changes/recent", dashboard) == 200
        erase = b'{"event_id":"e1","type":"person_erased","person_id":"p1",'
        erase += b'"occurred_at":"2026-01-01T00:00:00Z"}'
        assert await asyncio.to_thread(_post, f"{base}/events", dashboard, erase) == 403
        assert await asyncio.to_thread(_get, f"{base}/changes/recent", "wrong") == 401
        assert await asyncio.to_thread(_get, f"{base}/changes/recent", None) == 401
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, "\n".join(out.lines)
