"""The job the nemesis runs under each candidate: it records its own lifetime, nothing else.

Run as ``python job.py RECORDS_DIR CANDIDATE SEED``. One file per process under RECORDS_DIR,
named ``<candidate>.<token>.<pid>.<kind>`` (kind ``child`` or ``grandchild``), with lines

    S <monotonic> <token> <pid> <ppid> <kind> <flags> <slot>    once, at start
    H <monotonic>                                         every ~20 ms while alive
    E <monotonic> <reason>                                when it leaves by itself / on SIGTERM

The token comes from ``LEADERRUN_FENCING_TOKEN`` (or ``ETCD_LOCK_REV`` under ``etcdctl lock``),
the slot from ``LEADERRUN_SLOT`` (0 when absent).
What the job does in a term is drawn from (SEED, candidate, token): sometimes it ignores SIGTERM,
sometimes it leaves a background grandchild (sometimes in a session of its own) that heartbeats
too, sometimes it exits by itself after a few seconds. Stdlib only; starts in ~30 ms.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

HEARTBEAT = 0.02


def _token() -> int:
    for name in ("LEADERRUN_FENCING_TOKEN", "ETCD_LOCK_REV"):
        value = os.environ.get(name)
        if value and value.lstrip("-").isdigit():
            return int(value)
    return -1


class Recorder:
    def __init__(self, directory: str, candidate: str, token: int, kind: str, flags: str) -> None:
        path = os.path.join(directory, f"{candidate}.{token}.{os.getpid()}.{kind}")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        slot = os.environ.get("LEADERRUN_SLOT", "0")
        self.line(
            f"S {time.monotonic():.6f} {token} {os.getpid()} {os.getppid()} {kind} {flags} {slot}"
        )

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def beat(self) -> None:
        self.line(f"H {time.monotonic():.6f}")

    def end(self, reason: str) -> None:
        self.line(f"E {time.monotonic():.6f} {reason}")


def heartbeat(rec: Recorder, until: float | None) -> None:
    while until is None or time.monotonic() < until:
        rec.beat()
        time.sleep(HEARTBEAT)


def main() -> int:
    directory, candidate, seed = sys.argv[1], sys.argv[2], sys.argv[3]
    token = _token()
    rng = random.Random(f"{seed}:{candidate}:{token}")
    ignore_term = rng.random() < 0.3
    grandchild = rng.random() < 0.3
    detach = rng.random() < 0.5
    lifetime = rng.uniform(1.0, 6.0) if rng.random() < 0.15 else None
    flags = ",".join(
        f for f, on in (("ignore-term", ignore_term), ("grandchild", grandchild),
                        ("setsid", grandchild and detach), ("exits", lifetime is not None)) if on
    ) or "-"  # fmt: skip
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if grandchild and os.fork() == 0:
        if detach:
            os.setsid()
        grec = Recorder(directory, candidate, token, "grandchild", flags)
        if not ignore_term:
            signal.signal(signal.SIGTERM, lambda *_: (grec.end("SIGTERM"), os._exit(143)))
        heartbeat(grec, None)
        return 0
    rec = Recorder(directory, candidate, token, "child", flags)
    if not ignore_term:
        signal.signal(signal.SIGTERM, lambda *_: (rec.end("SIGTERM"), os._exit(143)))
    heartbeat(rec, None if lifetime is None else time.monotonic() + lifetime)
    rec.end("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
