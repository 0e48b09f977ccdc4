"""The training loop every stage shares: the stage says what to train, on what, and what to measure.

The loop owns what the stages have in common: seeding, the optimizer (Adam) and the loss scaler,
autocast, DDP under ``torchrun`` (rank 0 logs and writes), the schedule of logs, validations and
checkpoints, and resuming. Every step is reseeded from (seed, step, rank) and every stage's data
stream is a function of (seed, step), so a resumed run ends with the same weights as an
uninterrupted one: a checkpoint needs to hold only the step, the weights, the optimizer and the
scaler (see ``checkpoint.py``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vqcodec.train import dist
from vqcodec.train.checkpoint import checkpoint_path, load_checkpoint, read_state, save_checkpoint
from vqcodec.train.data import derive_seed
from vqcodec.train.run import MetricsLog, autocast, grad_scaler, say


class Validation(NamedTuple):
    """A stage's held-out measurements: the values to log, and a line that says them."""

    values: dict[str, float]
    summary: str


@dataclass
class Stage(ABC):
    """One training stage as the loop sees it; subclasses add their model, data and loss.

    ``settings`` are the arguments that shape the run, which a resumed run must keep; ``meta`` is
    what else its checkpoint records (the data it learns from).
    """

    env: dist.Dist
    precision: str
    settings: dict[str, Any]
    meta: dict[str, Any]

    @property
    @abstractmethod
    def name(self) -> str:
        """The checkpoint folder, the metrics' "stage" and the progress bar's label."""

    @property
    @abstractmethod
    def title(self) -> str:
        """How the closing message names the stage."""

    @property
    @abstractmethod
    def seed_parts(self) -> tuple[int | str, ...]:
        """What every seed of this stage is derived from, before "init" or ("step", step, rank)."""

    @abstractmethod
    def build(self) -> nn.Module:
        """The freshly initialised model (the loop seeds the RNG first)."""

    @abstractmethod
    def batches(self, start: int, stop: int) -> Iterable[Any]:
        """This rank's batches of steps ``start`` to ``stop - 1``, on its device."""

    @abstractmethod
    def forward(self, net: nn.Module, batch: Any) -> Any:
        """The model's output on ``batch`` (run under autocast)."""

    @abstractmethod
    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise and a 1-D tensor of statistics, summed over steps and ranks for the log."""

    @abstractmethod
    def summarize(self, totals: torch.Tensor, count: int) -> dict[str, Any]:
        """The log record of the statistics ``totals``, summed over ``count`` (step, rank) pairs."""

    @abstractmethod
    def progress(self, record: dict[str, Any]) -> str:
        """The progress bar's short summary of a log record."""

    def lr_factor(self, step: int, steps: int) -> float:
        """The learning rate of ``step`` (of ``steps``) as a fraction of the run's: 1 unless a stage
        decays it (a function of the step alone, so that a resumed run continues it exactly)."""
        return 1.0

    def validate(self, model: nn.Module) -> Validation | None:
        """Held-out measurements of ``model`` (all ranks take part), or None when there is nothing to
        measure on."""
        return None


@dataclass(frozen=True)
class Schedule:
    """How many steps to reach, and how often to log, validate and write a checkpoint."""

    steps: int
    log_every: int
    val_every: int
    ckpt_every: int

    def due(self, every: int, done: int) -> bool:
        """Whether an action done every ``every`` steps is due after ``done`` steps (always at the end)."""
        return done % every == 0 or done == self.steps


def train_stage(
    stage: Stage, run: Path, schedule: Schedule, lr: float, resume: bool | None
) -> dict[str, Any]:
    """Train ``stage`` of the run in ``run`` up to ``schedule.steps`` steps; return the last logged
    metrics. ``resume`` None continues from the stage's checkpoint when it exists, True requires it,
    False starts over."""
    device = stage.env.device
    torch.manual_seed(derive_seed(*stage.seed_parts, "init"))
    model = stage.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = grad_scaler(device, stage.precision)
    ckpt = checkpoint_path(run, stage.name)
    start = _restore(ckpt, model, optimizer, scaler, stage.settings, resume)
    log = MetricsLog(run, stage.name)
    log.rewind(start)
    if start >= schedule.steps:
        say(f"{ckpt} is already at step {start} >= {schedule.steps}: nothing to do")
        return {"step": start}
    loop = _Loop(stage, schedule, model, optimizer, scaler, log, ckpt, lr)
    record = loop.run(start)
    say(f"{stage.title} done: {ckpt} at step {schedule.steps}")
    return {"step": schedule.steps, **record}


class _Loop:
    """The steps of one stage from a start step on, with their logs, validations and checkpoints."""

    def __init__(
        self,
        stage: Stage,
        schedule: Schedule,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        log: MetricsLog,
        ckpt: Path,
        lr: float,
    ) -> None:
        self.stage, self.schedule, self.env = stage, schedule, stage.env
        self.lr = lr
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.net = DistributedDataParallel(model) if self.env.world_size > 1 else model
        self.log, self.ckpt = log, ckpt

    def run(self, start: int) -> dict[str, Any]:
        """Train from step ``start`` to the end; return the last log record with its validation."""
        stage, schedule = self.stage, self.schedule
        bar = tqdm(
            total=schedule.steps,
            initial=start,
            desc=stage.name,
            disable=not self.env.is_main,
            dynamic_ncols=True,
        )
        totals: torch.Tensor | None = None
        count, tick, record = 0, time.perf_counter(), {}
        self.model.train()
        for step, batch in enumerate(stage.batches(start, schedule.steps), start):
            torch.manual_seed(derive_seed(*stage.seed_parts, "step", step, self.env.rank))
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * stage.lr_factor(step, schedule.steps)
            stats = self._optimize(batch)
            totals = stats if totals is None else totals + stats
            count += 1
            bar.update()
            done = step + 1
            if schedule.due(schedule.log_every, done):
                record = self._log_training(done, totals, count, time.perf_counter() - tick)
                bar.set_postfix_str(stage.progress(record))
                totals, count, tick = None, 0, time.perf_counter()

            pause = time.perf_counter()  # validation and checkpoints do not count as step time
            if schedule.due(schedule.val_every, done):
                record.update(self._validate(done))
            if schedule.due(schedule.ckpt_every, done):
                _write_checkpoint(
                    self.ckpt, self.model, self.optimizer, self.scaler, done, self.checkpoint_meta
                )
            tick += time.perf_counter() - pause
        bar.close()
        return record

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        """The settings that a resume checks, beside what else the stage records."""
        return {"settings": self.stage.settings, **self.stage.meta}

    def _optimize(self, batch: Any) -> torch.Tensor:
        """One optimizer step on ``batch``; returns the stage's statistics of it."""
        with autocast(self.env.device, self.stage.precision):
            output = self.stage.forward(self.net, batch)
        loss, stats = self.stage.loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return stats

    def _log_training(self, done: int, totals: torch.Tensor, count: int, seconds: float) -> dict[str, Any]:
        """Log the statistics of the ``count`` steps since the last log, averaged over steps and ranks."""
        summed = dist.all_reduce_sum(totals.clone())
        record = {
            **self.stage.summarize(summed, count * self.env.world_size),
            "lr": self.optimizer.param_groups[0]["lr"],
            "sec_per_step": seconds / count,
        }
        self.log.write(done, **record)
        return record

    def _validate(self, done: int) -> dict[str, float]:
        """Log and say the stage's held-out measurements after ``done`` steps, if it has any."""
        validation = self.stage.validate(self.model)
        if validation is None:
            return {}
        self.log.write(done, **validation.values)
        say(f"step {done}: {validation.summary}")
        return validation.values


def _resuming(checkpoint: Path, resume: bool | None) -> bool:
    """Whether a stage resumes: if asked to (a checkpoint must exist), or (``resume`` None) if one does."""
    if resume and not checkpoint.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {checkpoint}")
    return checkpoint.exists() if resume is None else resume


def _should_resume(checkpoint: Path, resume: bool | None) -> bool:
    """``_resuming``, saying which."""
    resuming = _resuming(checkpoint, resume)
    if resuming:
        say(f"Resuming from {checkpoint}" + ("" if resume else " (found it; --no-resume starts over)"))
    elif checkpoint.exists():
        say(f"Starting over: {checkpoint} will be overwritten")
    else:
        say(f"Starting a new run (no checkpoint at {checkpoint})")
    return resuming


def check_resume(
    checkpoint: Path, settings: dict[str, Any], resume: bool | None, hints: dict[str, str] | None = None
) -> None:
    """Refuse what ``train_stage`` would refuse on resuming (no checkpoint, other settings) before a
    stage's costly preparation; ``hints`` say what changes a setting that the message cannot name."""
    if _resuming(checkpoint, resume):
        _check_same_settings(read_state(checkpoint)["meta"]["settings"], settings, hints or {})


SETTINGS_SINCE_0_2_4 = frozenset({"images", "steps"})
"""Settings that checkpoints of earlier vqcodec versions do not record (the training images; a prior's
fine-tune, its steps): checked only where recorded."""


def _check_same_settings(saved: dict[str, Any], given: dict[str, Any], hints: dict[str, str]) -> None:
    """A resumed run must continue with the settings that shaped it so far."""
    diffs = [
        f"{k}={given[k]!r} (checkpoint: {saved.get(k)!r}{'; ' + hints[k] if k in hints else ''})"
        for k in given
        if saved.get(k) != given[k] and (k in saved or k not in SETTINGS_SINCE_0_2_4)
    ]
    if diffs:
        raise ValueError(
            "cannot resume with different settings: "
            + ", ".join(diffs)
            + "; use the checkpoint's values or start over (--no-resume)"
        )


def _restore(
    ckpt: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    settings: dict[str, Any],
    resume: bool | None,
) -> int:
    """The step a stage starts at: 0, or when resuming the checkpoint's, with the model, optimizer and
    scaler restored from it and its settings checked against ``settings``."""
    if not _should_resume(ckpt, resume):
        return 0
    state = load_checkpoint(ckpt, model, optimizer, scaler)
    _check_same_settings(state["meta"]["settings"], settings, {})
    return state["step"]


def _write_checkpoint(
    ckpt: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    meta: dict[str, Any],
) -> None:
    """Write the checkpoint from the main process; every process waits until it is written."""
    if dist.is_main():
        save_checkpoint(ckpt, model, optimizer, scaler, step, meta)
    dist.barrier()
