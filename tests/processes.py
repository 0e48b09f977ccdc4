"""Run a test's worker function in several processes without ever hanging the suite.

Gloo connects ranks through the address that the machine's hostname resolves to; in a sandbox where
that address is unreachable, it waits for the process group's timeout (hours). Tests pin gloo to the
loopback interface and give up after a deadline, so a broken network is a failure, not a stuck CI.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import torch.multiprocessing as mp

DEADLINE_S = 300.0


def loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n.startswith("lo")), "lo")


def run_workers(worker: Callable[..., None], args: tuple, nprocs: int = 2) -> None:
    """``worker(rank, *args)`` in ``nprocs`` spawned processes; fail the test if they are not done in time."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())  # inherited by the spawned workers
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    start = time.monotonic()
    while not context.join(timeout=1.0):
        if time.monotonic() - start > DEADLINE_S:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{nprocs} workers still running after {DEADLINE_S:.0f} s (distributed set-up hung?)")
