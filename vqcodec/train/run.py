"""A training run: its folder, its metrics log, and the settings both training stages share.

A run folder holds everything of one model in training::

    RUN/config.json                      the ModelConfig (written by stage 1, read by everything after)
    RUN/metrics.jsonl                    one JSON object per line: {"stage", "step", ...}
    RUN/vqvae/checkpoint.safetensors     stage 1
    RUN/codes/{train,val}.safetensors    stage-1 codes of many crops, the priors' training data
    RUN/prior-<level>/checkpoint.safetensors   stage 2, one per level ("prior-top", "prior-bottom", ...)
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vqcodec.models.config import ModelConfig, level_names
from vqcodec.train import dist
from vqcodec.zoo.modelfile import atomic_path, config_from_json

PRECISIONS = ("fp32", "bf16", "fp16")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(device: torch.device) -> int:
    """Data-loading processes: a GPU outruns one CPU decoding images; on a CPU they would compete."""
    return 4 if device.type == "cuda" else 0


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """bf16 autocast on CUDA and fp32 elsewhere by default; fp16 (with loss scaling) only on CUDA."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, active for fp16 only (a no-op pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def say(message: str) -> None:
    """A progress message on stderr, from the main process only (tqdm-safe)."""
    if dist.is_main():
        tqdm.write(message, file=sys.stderr)


def prior_stage(n_levels: int, level: int) -> str:
    """The stage (and checkpoint folder) name of the prior of ``level``: "prior-top", "prior-bottom", ..."""
    return f"prior-{level_names(n_levels)[level]}"


def write_config(run: Path, config: ModelConfig) -> None:
    """Record the run's ModelConfig (main process); a run folder never changes its model (all processes)."""
    path = run / "config.json"
    if path.exists():
        if read_config(run) != config:
            raise ValueError(
                f"{run} already holds a run with another model configuration: choose another folder"
            )
        return
    if not dist.is_main():
        return
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def read_config(run: Path) -> ModelConfig:
    path = run / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train stage 1 first (vqcodec train vqvae --out {run})")
    return config_from_json(path.read_text())


class MetricsLog:
    """Appends JSON records {"stage", "step", ...} to RUN/metrics.jsonl (main process only)."""

    def __init__(self, run: Path, stage: str) -> None:
        self.path = run / "metrics.jsonl"
        self.stage = stage
        self.enabled = dist.is_main()

    def rewind(self, step: int) -> None:
        """Drop this stage's records after ``step``: a resumed (or restarted) run logs those steps again.
        A line that is not a JSON record (one cut short when a disk filled, say) is dropped too, with a
        warning: it is no record, and it must not stop every stage of the run."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not self._after(line, step)]
        if len(kept) < len(lines):
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(kept))

    def _after(self, line: str, step: int) -> bool:
        """Whether ``line`` is this stage's record of a step after ``step``, or no record at all."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            say(f"Warning: dropping a damaged line of {self.path}: {line.strip()[:60]!r}")
            return True
        if not isinstance(record, dict):
            say(f"Warning: dropping a line of {self.path} that is no record: {line.strip()[:60]!r}")
            return True
        return record.get("stage") == self.stage and record.get("step", 0) > step

    def write(self, step: int, **values: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"stage": self.stage, "step": step, **values}) + "\n")
