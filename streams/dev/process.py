"""The one child-process wrapper: the dev stack's worker, the tests' workers and the
benchmark's processors all run through `ChildProcess`.

A child runs in its own process group (so a kill reaches everything it started), with its
output appended to a log file, and is stopped by PID: SIGTERM to the group (what a
supervisor sends; Faust stops cleanly), SIGKILL (a crash: nothing flushed) or both in turn.
Every child started in this process is listed by `ChildProcess.running()`, which is how the
test suite makes sure no worker outlives its test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

_PR_SET_PDEATHSIG = 1


def _term_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """A command in its own process group, output appended to `log_path`.

    `env` is added to this process's environment; `die_with_parent` asks Linux to SIGTERM
    the child when its parent dies (the dev stack's worker must not outlive `leadflow dev`).
    `start()` may be called again once the previous run has exited.
    """

    _started: ClassVar[list[ChildProcess]] = []

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.command = command
        self.log_path = Path(log_path)
        self.env = env or {}
        self.cwd = cwd
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.proc: subprocess.Popen[bytes] | None = None

    # -- start ------------------------------------------------------------------------------
    def start(self) -> ChildProcess:
        if self.alive:
            raise RuntimeError(f"{self.command[0]} is still running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_term_with_parent if self.die_with_parent else None,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                cwd=self.cwd,
            )
        ChildProcess._started.append(self)
        return self

    @classmethod
    def running(cls) -> list[ChildProcess]:
        """Every child started in this process that has not exited (and forget the rest)."""
        cls._started = [child for child in cls._started if child.alive]
        return list(cls._started)

    # -- state ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> int | None:
        """The exit status once the child has exited, else None (also before any start)."""
        return None if self.proc is None else self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.exited()

    def rss_mb(self) -> float | None:
        """Resident memory (VmRSS) of the child, or None once it has exited."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except (OSError, TypeError):
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU of the child (Linux), 0 if unknown."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "<no log>"

    # -- stop -------------------------------------------------------------------------------
    def _signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)  # type: ignore[union-attr]

    def kill(self, timeout: float = 10.0) -> None:
        """kill -9 of the child's process group (a crash: nothing flushed, nothing left)."""
        if self.alive:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout)  # type: ignore[union-attr]

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the group and wait up to `timeout`; the exit status, or None (and the
        child still running) when it ignored the signal."""
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        return self.exited()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; idempotent."""
        if self.alive and self.terminate(timeout) is None:
            self.kill()
