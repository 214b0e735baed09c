"""Issue 20's racing counter: 8 processes each do N read-increment-write cycles of a counter
kept in a lock's data, each cycle under the lock; the final count is exactly 8 × N.

The lock is what makes it exact (docs/api.md: a mutex has one holder at a time, and data
writes need a current holder's ticket). Each grant has its own fence, and fences only go
up, so the 8 × N fences seen are all different.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import leasehold
from conftest import DEADLINE_S, SRC, WRITE_KEY, Server

PROCESSES = 8
CYCLES = 25


def test_racing_counter_over_8_processes_stays_exact(server: Server, client: leasehold.Client, lock_name: str) -> None:
    worker = Path(__file__).resolve().parent / "counter_worker.py"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), server.url, WRITE_KEY, lock_name, str(CYCLES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        fences = []
        for proc in procs:
            out, _ = proc.communicate(timeout=10 * DEADLINE_S)
            assert proc.returncode == 0
            fences.extend(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert client.get_data(lock_name, "n") == PROCESSES * CYCLES
    assert len(fences) == PROCESSES * CYCLES
    assert len(set(fences)) == PROCESSES * CYCLES
