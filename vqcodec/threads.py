"""How many CPU threads a codec call uses, and how torch's idle threads wait.

Between two parallel operations, torch's OpenMP threads (GNU libgomp in its Linux builds) spin for
a while before they sleep. The decoder runs thousands of small operations, so some spinning saves
waking the threads up for each one; but on a busy machine long spins take the cores that the
working threads need, and a call can take ten times as long. A short spin (``GOMP_SPINCOUNT``)
keeps most of the first and little of the second: ``benchmarks/results/speed/threads.md`` compares
it with OpenMP's default, with passive waiting (``OMP_WAIT_POLICY=PASSIVE``) and with one thread,
on an idle machine and beside a parallel load.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
from collections.abc import Iterator

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
SHORT_SPIN = "3000"
"""Spin iterations before an idle libgomp thread sleeps (libgomp's own default: 300,000)."""


def spin_briefly() -> None:
    """Ask OpenMP for short spins, unless the user set either variable.

    OpenMP reads them when torch is first imported: after that, this changes nothing.
    """
    if "torch" not in sys.modules and WAIT_POLICY not in os.environ and SPIN_COUNT not in os.environ:
        os.environ[SPIN_COUNT] = SHORT_SPIN


MAX_THREADS = 1024
"""The most threads a call may ask for: OpenMP crashes the process when it cannot start them all."""


def check_threads(threads: int | None) -> None:
    """Raise ValueError unless ``threads`` is None (torch's default) or a count from 1 to MAX_THREADS."""
    if threads is not None and (
        isinstance(threads, bool)
        or not isinstance(threads, numbers.Integral)
        or not 1 <= threads <= MAX_THREADS
    ):
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} or None, got {threads!r}")


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` CPU threads in torch (None: leave torch's setting alone)."""
    check_threads(threads)
    if threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
