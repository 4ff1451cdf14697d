"""Apache Kafka from Maven Central: the jars, the single-node settings, the storage format.

Nothing in PyPI, npm or Debian ships a Kafka broker, but Maven Central has the whole broker as
jars, and a JVM (Java 17+) runs it with no Docker: `streams/dev/kafka/pom.xml` names them, `mvn
dependency:copy-dependencies` copies them once into a cache shared by every data dir
(``$LEADFLOW_CACHE_DIR`` or ``~/.cache/leadflow``), and later starts are offline.

The broker is one JVM in KRaft mode (broker and controller; no ZooKeeper), sized for a
2-core laptop: 512 MiB heap, two network and two I/O threads, a 16 MiB cleaner buffer, every
internal topic with replication 1. Topics are never auto-created, as in production.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "KafkaSecurity",
    "KafkaUnavailable",
    "ensure_kafka_jars",
    "format_storage",
    "java_command",
    "server_properties",
]

#: The Kafka version leadflow runs and tests on (also in pom.xml, compose and deploy/).
KAFKA_VERSION = "4.3.1"
HERE = Path(__file__).with_name("kafka")
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
MIN_JAVA = 17

JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    # A single-node dev/test broker: the serial collector and the C1 compiler start fastest
    # and use least CPU on 2 cores; production brokers are sized by their operators.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or the jars could not be fetched; the message says what to do."""


def cache_dir() -> Path:
    base = os.environ.get("LEADFLOW_CACHE_DIR") or Path.home() / ".cache" / "leadflow"
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaUnavailable(
            f"Apache Kafka needs Java {MIN_JAVA} or newer and no `java` is on PATH: install "
            "it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or use --kind tansu"
        )
    probe = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)', probe.stderr + probe.stdout)
    if found and int(found.group(1)) < MIN_JAVA:
        raise KafkaUnavailable(
            f"Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer; {java} is Java "
            f"{found.group(1)}: install a newer one (Debian: apt-get install "
            "openjdk-17-jre-headless)"
        )
    return java


def ensure_kafka_jars() -> Path:
    """The folder holding the broker's jars, fetched from Maven Central on first use.

    Safe to call from parallel processes: one fetches under a file lock, the others wait and
    reuse its result. A half-finished fetch never counts (the folder is renamed into place).
    """
    lib = cache_dir() / "lib"
    if (lib / ".complete").exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with (lib.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / ".complete").exists():
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaUnavailable(
                f"the Apache Kafka {KAFKA_VERSION} jars are not cached in {lib} and no `mvn` is "
                "on PATH to fetch them from Maven Central: install Maven (Debian/Ubuntu: "
                "apt-get install maven) or use --kind tansu"
            )
        staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
            DEPENDENCY_PLUGIN,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = (done.stdout + done.stderr).strip()[-1500:]
            raise KafkaUnavailable(
                f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central failed (mvn exit "
                f"{done.returncode}); check the network or a proxy in ~/.m2/settings.xml:\n{tail}"
            )
        (staging / ".complete").touch()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(lib)
        staging.rename(lib)
    return lib


def java_command(lib: Path, main: str, *args: str, log_dir: Path) -> list[str]:
    return [
        _java(),
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={LOG4J}",
        f"-Dkafka.logs.dir={log_dir}",
        "-cp",
        f"{lib}/*",
        main,
        *args,
    ]


@dataclass(frozen=True)
class KafkaSecurity:
    """A SASL_SSL client listener: TLS with `keystore` (one PEM file: the broker's private key,
    unencrypted PKCS#8, then its certificate chain) and SCRAM users created when the data dir
    is formatted (KRaft keeps them in its metadata log).

    The broker's own traffic (and leadflow's readiness probe) uses a PLAINTEXT listener on
    `internal_port`, on the same loopback host: a dev and test broker, not a hardened one.
    """

    keystore: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> password
    mechanism: str = "SCRAM-SHA-512"

    def scram_arguments(self) -> list[str]:
        """`StorageTool format` arguments that create the users."""
        arguments = []
        for name, password in self.users.items():
            if any(c in name + password for c in ",=[]\"'"):
                raise KafkaUnavailable(f"SCRAM user {name!r}: avoid , = [ ] and quotes in it")
            arguments += ["--add-scram", f"{self.mechanism}=[name={name},password={password}]"]
        return arguments


def server_properties(
    host: str,
    port: int,
    controller_port: int,
    log_dir: Path,
    *,
    security: KafkaSecurity | None = None,
    internal_port: int | None = None,
) -> str:
    """A single-node KRaft broker on `host`: PLAINTEXT clients on `port`, or with `security`
    SASL_SSL clients on `port` and the broker's own PLAINTEXT listener on `internal_port`."""
    if security is None:
        listeners = f"""\
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""
    else:
        assert internal_port is not None, "a SASL_SSL broker needs an internal port"
        mechanism = security.mechanism.lower()
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        listeners = f"""\
listeners=SASL_SSL://{host}:{port},INTERNAL://{host}:{internal_port},CONTROLLER://{host}:{controller_port}
advertised.listeners=SASL_SSL://{host}:{port},INTERNAL://{host}:{internal_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={security.mechanism}
listener.name.sasl_ssl.sasl.enabled.mechanisms={security.mechanism}
listener.name.sasl_ssl.{mechanism}.sasl.jaas.config={scram_login}
ssl.keystore.type=PEM
ssl.keystore.location={security.keystore}
ssl.client.auth=none
"""
    return f"""\
# Written by leadflow (streams/dev/kafka_dist.py) at every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
{listeners}log.dirs={log_dir}

# one node: every internal topic with replication 1 and few partitions (defaults 3 / 50)
default.replication.factor=1
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1

# no 3 s wait before a group's first rebalance; topics only as leadflow creates them
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false

# a 2-core machine: few threads, a small cleaner buffer (default 128 MiB of heap)
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=1000
"""


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding (`kafka-storage.sh random-uuid`)."""
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):  # would read as an option to StorageTool
            return cluster


def format_storage(
    lib: Path, properties: Path, log_dir: Path, log_file: Path, extra: list[str] | None = None
) -> None:
    """Format a new data dir once; an already formatted one keeps its cluster and records
    (and its SCRAM users: `extra` arguments such as `--add-scram` only count the first time)."""
    if (log_dir / "meta.properties").exists():
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    command = java_command(
        lib,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        new_cluster_id(),
        "-c",
        str(properties),
        *(extra or []),
        log_dir=properties.parent,
    )
    with log_file.open("ab") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise KafkaUnavailable(
            f"formatting the Kafka data dir {log_dir} failed (exit {done.returncode}); "
            f"see {log_file}"
        )
