"""Running a command to its end and reading its own peak RSS and CPU time, for the benchmarks.

A child started by a large process reports a peak RSS of at least that process's own at the
fork: Linux keeps the larger of the pre-exec and post-exec peaks in `ru_maxrss` (a 300 MB
parent made `python -c pass` report 311 MB). So the command is started by `RUNNER`, a fresh
`python -S` (~10 MB), which waits for it and writes what `wait4` says of it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

#: Runs argv[2:] and writes its exit code, peak RSS (KB) and CPU seconds to argv[1].
RUNNER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write('%d %d %r' % (os.waitstatus_to_exitcode(status), usage.ru_maxrss,\n"
    "                           usage.ru_utime + usage.ru_stime))\n"
)


def run(
    command: list[str], stdout: Any, env: dict[str, str] | None, report: Path
) -> tuple[int, int, float]:
    """Run `command` to the end: (exit code, its peak RSS in KB, its CPU seconds)."""
    report.unlink(missing_ok=True)
    runner = [sys.executable, "-S", "-c", RUNNER, str(report)]
    code = subprocess.run([*runner, *command], stdout=stdout, env=env, check=False).returncode
    if not report.exists():
        return code or 1, 0, 0.0
    exit_code, rss, cpu = report.read_text().split()
    return int(exit_code), int(rss), float(cpu)
