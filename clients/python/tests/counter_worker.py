"""One of the racing counter's processes (test_counter.py): N read-increment-write cycles.

Usage: ``counter_worker.py URL KEY LOCK N``. It prints ``ready``, waits for a line on
stdin (so every process starts at once), then, N times, takes the lock, reads the counter
kept in the lock's data (key ``n``), writes it back plus one, and releases. It prints the
fences it held as one line of JSON at the end.
"""

from __future__ import annotations

import json
import sys

import leasehold


def main() -> None:
    url, key, lock, cycles = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = leasehold.Client(url, api_key=key)
    print("ready", flush=True)
    sys.stdin.readline()
    fences = []
    for _ in range(cycles):
        with client.lock(lock, ttl="10s", wait="60s") as lease:
            value = lease.get("n", 0)
            lease.check()
            lease.put("n", value + 1)
            fences.append(lease.fence)
    client.close()
    print(json.dumps(fences), flush=True)


if __name__ == "__main__":
    main()
