"""What every benchmark's report shares: the machine it ran on, markdown tables, and the files it writes.

Each run writes its numbers twice: JSON for programs, markdown for people (the README links the
markdown). Times belong to a machine, so every report names it in its first line.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """The CPU, cores, library versions and date a run's times belong to."""
    import torch
    from PIL import Image

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_line(machine: Mapping[str, Any], threads: bool = False) -> str:
    """ "Run DATE on CPU (N cores), torch VERSION": how every report begins; ``threads`` adds torch's."""
    line = f"Run {machine['date']} on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}"
    return line + (f" ({machine['torch_threads']} threads)" if threads else "")


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines; ``align`` has a letter per column: l (text) or r (numbers).

    An empty heading (over row labels) is written ``| |``, an empty cell (nothing measured) ``|  |``.
    """
    heading = "|" + "|".join(f" {name} " if name else " " for name in header) + "|"
    lines = [heading, "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def number(value: float | None, digits: int, unit: str = "", sign: bool = False) -> str:
    """``value`` to ``digits`` decimals with ``unit``; empty for None (a cell with nothing to show)."""
    if value is None or not math.isfinite(value):
        return "" if value is None else str(value)
    return f"{value:{'+' if sign else ''}.{digits}f}{unit}"


def save(out: str | os.PathLike[str], files: Mapping[str, Any]) -> list[Path]:
    """Write each of ``files`` (name: content) into ``out``: strings as they are, anything else as JSON
    (strict: an infinite or NaN number, say the PSNR of a lossless point, is null)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in files.items():
        if not isinstance(content, str):
            content = json.dumps(_finite(content), indent=2, allow_nan=False) + "\n"
        (folder / name).write_text(content, encoding="utf-8")
        paths.append(folder / name)
    return paths


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float in it replaced by None, which JSON can hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
