"""The published OpenAPI document is the behaviour: schemathesis, with every check and the
token, against a live worker on the session broker must find nothing.

Bounded so it stays a test, not a campaign: at most `MAX_EXAMPLES` cases per operation and
phase, one request at a time, a fixed seed (`LEADFLOW_SCHEMATHESIS_SEED` picks another, to
explore). The run's report is in the test's temp dir.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.worker import TOKEN, Worker

pytestmark = pytest.mark.integration

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_EXAMPLES = 30


async def test_schemathesis_with_every_check_finds_no_failure(broker, make_topics, tmp_path: Path):
    names = await make_topics(partitions=4)
    worker = Worker(broker, names, tmp_path, "contract")
    await worker.ready()
    seed = os.environ.get("LEADFLOW_SCHEMATHESIS_SEED", "14")
    command = [
        SCHEMATHESIS,
        "run",
        str(OPENAPI),
        "--url",
        worker.url,
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--seed",
        seed,
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=360,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if "generated" in line or "=====" in line]
    print("\n".join(summary[-3:]))
    assert done.returncode == 0, f"schemathesis (seed {seed}) found failures:\n{output[-8000:]}"
    log = worker.log.read_text(errors="replace")
    # aiohttp logs a traceback for the request schemathesis probes NUL bytes in headers with
    # (and answers 400); any other traceback is ours.
    probes = log.count("aiohttp.http_exceptions.BadHttpMessage")
    assert worker.alive and log.count("Traceback") == probes, log[-6000:]
