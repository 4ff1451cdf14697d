"""The one child-process wrapper (`streams.dev.process.ChildProcess`): what the dev stack, the
test workers and the benchmark rely on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from streams.dev.process import ChildProcess

# A parent that starts a grandchild in the same group, prints its pid, and then waits; on
# SIGTERM it exits 7 (the grandchild keeps running unless the group is signalled).
PARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("grandchild", child.pid, flush=True)
time.sleep(60)
"""


def _grandchild(log: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("grandchild "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no grandchild in {log.read_text()!r}")


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie of an exited grandchild (re-parented to init here) also counts as gone
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_kill_reaches_the_whole_process_group(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", PARENT], tmp_path / "p.log").start()
    grandchild = _grandchild(tmp_path / "p.log")
    assert child.alive and child.exited() is None
    assert child in ChildProcess.running()
    child.kill()
    assert child.exited() == -9
    assert _gone(grandchild), "kill left the grandchild running"
    assert child not in ChildProcess.running()


def test_terminate_returns_the_exit_status_and_stop_is_idempotent(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", PARENT], tmp_path / "p.log").start()
    grandchild = _grandchild(tmp_path / "p.log")
    assert child.terminate(10) == 7
    assert _gone(grandchild)
    child.stop()
    child.kill()
    assert child.exited() == 7


def test_output_env_and_restart(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    code = "import os; print('value', os.environ['LEADFLOW_X'], flush=True)"
    child = ChildProcess([sys.executable, "-c", code], log, env={"LEADFLOW_X": "one"})
    assert child.exited() is None and child.pid is None and not child.alive
    child.start().proc.wait(10)
    child.env["LEADFLOW_X"] = "two"
    child.start().proc.wait(10)  # a second run appends to the same log
    assert child.exited() == 0
    assert log.read_text().splitlines() == ["value one", "value two"]
    assert "value two" in child.log_tail(20)


def test_a_running_child_cannot_be_started_twice(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "l")
    child.start()
    try:
        try:
            child.start()
        except RuntimeError as error:
            assert "still running" in str(error)
        else:
            raise AssertionError("started a running child again")
        assert child.rss_mb() is not None  # read from /proc while it runs
    finally:
        child.kill()
    assert child.rss_mb() is None
