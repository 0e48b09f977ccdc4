"""How many CPU threads a codec call uses, and how torch's idle threads wait.

Torch's OpenMP threads spin while they wait for work. On a busy machine the spinning threads take
the cores that the working ones need, and a call can take ten times as long as with one thread.
Idle threads that sleep (``OMP_WAIT_POLICY=PASSIVE``) keep the default thread count safe; the speed
benchmark measures both under a parallel load (``benchmarks/results/speed``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively() -> None:
    """Ask OpenMP to let idle threads sleep, unless the user chose otherwise.

    OpenMP reads the variable when torch is first imported: after that, this changes nothing.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def check_threads(threads: int | None) -> None:
    """Raise ValueError unless ``threads`` is None (torch's default) or a positive count."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` CPU threads in torch (None: leave torch's setting alone)."""
    check_threads(threads)
    if threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
