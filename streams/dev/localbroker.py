"""`LocalBroker`: a broker child process on loopback ports, the interface both kinds share
(`streams.dev.broker` holds the kinds).

Every broker runs in its own session/process group and ``stop()`` signals that group by the
PID we started (SIGTERM, wait, SIGKILL). An ``atexit`` hook and, when started from the main
thread on Linux, ``PR_SET_PDEATHSIG`` (SIGKILL) make sure a crashed or killed test run does
not leave a broker behind. This is not `streams.dev.process.ChildProcess` on purpose: a
broker must die with the *thread* that is its parent only when that is the main thread, and
its readiness is a Kafka request, not a process state.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    pass

from streams.dev.probe import kafka_ping

HOST = "127.0.0.1"


class BrokerStartError(RuntimeError):
    """The broker process exited or never answered Kafka requests."""


def free_port(host: str = HOST) -> int:
    """Return a currently free TCP port on ``host`` (the OS picks it; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
