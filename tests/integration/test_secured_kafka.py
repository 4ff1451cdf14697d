"""Kafka with a SASL_SSL listener (SCRAM-SHA-512, a CA made by the test): the worker and the
commands connect with the credentials and the CA from the environment; a wrong password, an
untrusted certificate or a plaintext client fail at start with one line, within seconds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.dev.broker import KafkaBroker
from streams.dev.dev_tls import DevCertificates, make_certificates
from streams.dev.kafka_dist import KafkaSecurity
from tests.fixtures.worker import LEADFLOW, Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]

USER, PASSWORD = "leadflow-app", "scram-" + "s" * 20
FAIL_WITHIN_S = 15.0  # a refused start answers in well under this; a hang would not
FIT = {"seniority": "vp", "industry": "software", "employees": 300, "country": "DE"}


@pytest.fixture(scope="module")
def secured(
    broker_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, DevCertificates]]:
    assert broker_kind == "kafka"
    where = tmp_path_factory.mktemp("secured-kafka")
    certs = make_certificates(where / "tls")
    broker = KafkaBroker(
        data_dir=where / "kafka",
        log_path=where / "kafka.log",
        security=KafkaSecurity(certs.keystore, {USER: PASSWORD}),
    ).start()
    try:
        yield broker, certs
    finally:
        broker.stop()


def security_env(certs: DevCertificates, **override: str) -> dict[str, str]:
    return {
        "LEADFLOW_SECURITY_PROTOCOL": "SASL_SSL",
        "LEADFLOW_SASL_MECHANISM": "SCRAM-SHA-512",
        "LEADFLOW_SASL_USERNAME": USER,
        "LEADFLOW_SASL_PASSWORD": PASSWORD,
        "LEADFLOW_SSL_CAFILE": str(certs.ca),
        **override,
    }


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [LEADFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def events(prefix: str) -> list[dict[str, Any]]:
    out = []
    for n in range(20):
        person = f"{prefix}-p{n}"
        out += [
            {
                "event_id": f"{person}-1",
                "person_id": person,
                "type": "webinar_attended",
                "occurred_at": "2026-01-05T09:00:00Z",
                "source": "webinar",
                "profile": FIT,
            },
            {
                "event_id": f"{person}-2",
                "person_id": person,
                "type": "demo_requested",
                "occurred_at": "2026-01-06T09:00:00Z",
                "source": "webinar",
            },
        ]
    return out


async def test_worker_send_tail_and_export_history_work_over_sasl_ssl(
    secured, new_topic_names, tmp_path: Path
):
    broker, certs = secured
    env = security_env(certs)
    names = new_topic_names()
    prefix = names.events.removesuffix(".leadflow.events")
    worker = Worker(broker, names, tmp_path, "secured", env=env)
    await worker.ready(timeout=120)

    inbound = tmp_path / "events.jsonl"
    sent = events("sec")
    inbound.write_bytes(b"\n".join(orjson.dumps(e) for e in sent) + b"\n")
    code, out, err, _ = await asyncio.to_thread(
        run, ["send", str(inbound), "--broker", broker.url, "--topic-prefix", prefix], env
    )
    assert code == 0, out + err

    async def all_mql() -> bool:
        status, body = await asyncio.to_thread(worker.request, "/changes/recent?limit=200")
        return status == 200 and sum(c["to_stage"] == "mql" for c in body) == 20

    await wait_for(all_mql, 60, "20 persons to reach mql through the SASL_SSL worker")

    code, out, err, _ = await asyncio.to_thread(
        run,
        [
            *("tail", "--broker", broker.url, "--topic-prefix", prefix, "--from-beginning"),
            *("--json", "--limit", "40", "--idle-timeout", "30"),
        ],
        env,
    )
    assert code == 0, out + err
    tailed = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(tailed) == 40 and {c["to_stage"] for c in tailed} == {"lead", "mql"}

    history = tmp_path / "history.jsonl"
    code, out, err, _ = await asyncio.to_thread(
        run,
        ["export-history", "--out", str(history), "--broker", broker.url, "--topic-prefix", prefix],
        env,
    )
    assert code == 0, out + err
    exported = [orjson.loads(line) for line in history.read_text().splitlines()]
    assert sorted(r["event"]["event_id"] for r in exported) == sorted(e["event_id"] for e in sent)
    assert worker.alive


BROKER_COMMANDS = {
    "worker": ["worker", "--store", "memory", "--web-port", "0"],
    "send": ["send", "EVENTS"],
    "tail": ["tail", "--limit", "1"],
    "export-history": ["export-history", "--out", "OUT"],
    "topics create": ["topics", "create"],
    "replay --broker": ["replay", "--broker", "BROKER"],
}


def refused(
    broker: KafkaBroker, tmp_path: Path, env: dict[str, str], says: str
) -> dict[str, float]:
    """Every broker command with `env`: non-zero, one line on stderr saying `says`, fast."""
    inbound = tmp_path / "one.jsonl"
    inbound.write_bytes(orjson.dumps(events("refused")[0]) + b"\n")
    seconds = {}
    for label, args in BROKER_COMMANDS.items():
        args = [
            {"EVENTS": str(inbound), "OUT": str(tmp_path / "h.jsonl"), "BROKER": broker.url}.get(
                a, a
            )
            for a in args
        ]
        if "--broker" not in args:
            args += ["--broker", broker.url]
        code, out, err, took = run([*args, "--topic-prefix", "refused"], env, timeout=60)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0, (label, out, err)
        assert len(lines) == 1 and says in lines[0], (label, lines, out)
        assert took < FAIL_WITHIN_S, (label, took)
        seconds[label] = round(took, 2)
    return seconds


def test_a_wrong_password_fails_every_command_at_start_with_one_line(secured, tmp_path: Path):
    broker, certs = secured
    env = security_env(certs, LEADFLOW_SASL_PASSWORD="not-the-password")
    seconds = refused(broker, tmp_path, env, f"authentication failed for user '{USER}'")
    print(f"\nwrong password refused in {seconds}")


def test_an_untrusted_certificate_fails_every_command_at_start_with_one_line(
    secured, tmp_path: Path
):
    broker, _ = secured
    stranger = make_certificates(tmp_path / "other-ca", name="other")
    env = security_env(stranger, LEADFLOW_SSL_CAFILE=str(stranger.ca))
    seconds = refused(broker, tmp_path, env, "certificate is not trusted")
    print(f"\nuntrusted CA refused in {seconds}")


def test_a_plaintext_client_on_the_sasl_ssl_listener_fails_with_one_line(secured, tmp_path: Path):
    broker, _ = secured
    env = {"LEADFLOW_SECURITY_PROTOCOL": "PLAINTEXT"}
    code, _, err, took = run(["tail", "--broker", broker.url, "--limit", "1"], env, 60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "LEADFLOW_SECURITY_PROTOCOL" in lines[0], lines
    assert took < FAIL_WITHIN_S
