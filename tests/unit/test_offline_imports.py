"""An offline command loads no Kafka client: `leadflow replay --events F` and the other
commands that only read files never import Faust, aiokafka or mode (issue 13: Faust alone was
34 MB and 0.37 s at the start of every offline command), nor cryptography when no field is
sealed.

Each check runs a real interpreter (a module imported by an earlier test in this process
would hide the import), runs the command through the typer app as `leadflow` does, and lists
the runtime libraries it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from lifecycle.policy import load_preset
from lifecycle.replay import replay
from streams.dev.demo import synthetic_events
from streams.tools.files import read_events

ROOT = Path(__file__).resolve().parents[2]
#: what an offline command on files with no sealed personal field never needs (cryptography
#: opens sealed fields: ~7 MB of RSS at start)
RUNTIME = ("faust", "aiokafka", "mode", "aiohttp", "rocksdict", "cryptography")

PROBE = """
import json, sys
from streams.cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    loaded = [m for m in {runtime!r} if m in sys.modules]
    print("LOADED=" + json.dumps(loaded), file=sys.stderr)
"""


def loaded_by(*args: str) -> list[str]:
    """The runtime libraries `leadflow ARGS` imported, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(runtime=RUNTIME), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED="))
    return json.loads(line.removeprefix("LOADED="))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An events file and the history its replay writes."""
    folder = tmp_path_factory.mktemp("offline")
    events, history = folder / "events.jsonl", folder / "history.jsonl"
    made = synthetic_events(50, 400, seed=3, duplicates=0.01)
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in made))
    decisions = replay(read_events(events), load_preset("default"))
    history.write_bytes(
        b"".join(orjson.dumps(d.to_wire()) + b"\n" for d in decisions if not d.duplicate)
    )
    return {"events": events, "history": history}


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "--events", "{events}", "--jobs", "1"],
        ["replay", "--events", "{events}", "--state"],
        ["verify", "--history", "{history}"],
        ["funnel", "--events", "{events}"],
        ["simulate", "--events", "{events}", "--policy", "default", "--against", "mature"],
        ["policy", "check", "--preset", "default"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_offline_command_imports_no_kafka_client(
    command: list[str], files: dict[str, Path]
) -> None:
    args = [a.format(**files) for a in command]
    assert loaded_by(*args) == [], f"leadflow {' '.join(args)} imported a Kafka runtime"


def printed_by(probe: str) -> list[str]:
    """The words `probe` printed, run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_a_command_that_reads_a_topic_builds_its_clients_without_faust() -> None:
    """`replay | funnel | simulate | verify --broker` and the exports: client options, the
    preflight, the readers and the history parsers load aiokafka but not Faust (34 MB)."""
    probe = (
        "import sys\n"
        "from streams.settings import Settings\n"
        "Settings(broker='kafka://localhost:1').aiokafka_kwargs()\n"
        "import streams.cli.reading, streams.kafka.preflight, streams.kafka.readers\n"
        "import streams.tools.export\n"
        "import asyncio\n"
        "from aiokafka.cluster import ClusterMetadata\n"
        "class Client:\n"  # what `partitions_of` asks of a consumer's client, no broker
        "    async def fetch_all_metadata(self):\n"
        "        return ClusterMetadata()\n"
        "class Consumer:\n"
        "    _client = Client()\n"
        "assert asyncio.run(streams.kafka.readers.partitions_of(Consumer(), 't')) is None\n"
        "print(sorted(m for m in ('faust', 'mode', 'aiokafka') if m in sys.modules))\n"
    )
    assert printed_by(probe) == ["['aiokafka']"]


def test_a_command_that_configures_a_broker_client_forbids_auto_creation() -> None:
    """The other side: building client options (every client of ours is configured by
    `Settings.aiokafka_kwargs()`) swaps in the Metadata request without auto-creation."""
    probe = (
        "import aiokafka.client, aiokafka.admin.client\n"
        "from streams.settings import Settings\n"
        "before = aiokafka.client.MetadataRequest.__name__\n"
        "Settings(broker='kafka://localhost:1').aiokafka_kwargs()\n"
        "print(before, aiokafka.client.MetadataRequest.__name__,"
        " aiokafka.admin.client.MetadataRequest.__name__)\n"
    )
    assert printed_by(probe) == [
        "MetadataRequest",
        "MetadataRequestNoAutoCreate",
        "MetadataRequestNoAutoCreate",
    ]
