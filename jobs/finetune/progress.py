"""Progress of a run: a Trainer callback records it and emits events; the driver draws them.

`JobCallback` runs in every training process. It keeps the run's history (each epoch's training
loss and validation metrics, the first step's loss, time spent training, evaluating and writing
checkpoints) and, in the first process only, emits small events: directly to the `Renderer` when
training runs in this process, through a Ray queue when it runs on Ray Train workers.

The `Renderer` draws one bar per epoch with the loss, samples/s and an ETA on a terminal, and
prints plain lines at every tenth of an epoch otherwise; after each epoch, the validation metrics.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback

Event = dict[str, Any]
Emit = Callable[[Event], None]

EMIT_INTERVAL_S = 0.25
"""Least time between two step events sent from a worker (the renderer needs no more)."""
PLAIN_LINES_PER_EPOCH = 10
_SKIPPED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


class JobCallback(TrainerCallback):
    """History, timings and progress events of one training run."""

    def __init__(self, emit: Emit | None, train_samples: int, batch_size: int, metric: str) -> None:
        self.emit = emit
        self.train_samples = train_samples
        self.batch_size = batch_size
        self.metric = metric
        self.epochs: list[dict[str, float]] = []
        self.first_step_loss: float | None = None
        self.training = False
        self.seconds = {"total": 0.0, "evaluating": 0.0, "checkpointing": 0.0, "cpu": 0.0}
        self.samples = 0
        self._epoch = 0
        self._epoch_start_step = 0
        self._steps_per_epoch = 0
        self._losses: list[tuple[float, int]] = []  # (mean loss, steps) logged this epoch
        self._last_logged_step = 0
        self._marks: dict[str, float] = {}
        self._last_emit = 0.0

    # ---- events from the Trainer -------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True
        self._marks["begin"] = self._marks["phase"] = time.perf_counter()
        self._marks["cpu"] = time.process_time()
        epochs = max(1, math.ceil(args.num_train_epochs))
        self._steps_per_epoch = max(1, round(state.max_steps / args.num_train_epochs))
        self._send(
            kind="start",
            epochs=epochs,
            steps_per_epoch=self._steps_per_epoch,
            batch_size=self.batch_size,
            train_samples=self.train_samples,
        )

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch += 1
        self._epoch_start_step = state.global_step
        self._losses = []
        self._send(kind="epoch", epoch=self._epoch, t=time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = state.global_step - self._epoch_start_step
        if step >= self._steps_per_epoch:
            control.should_log = True  # every epoch's last steps count in its own training loss
        now = time.perf_counter()
        if step in (1, self._steps_per_epoch) or now - self._last_emit >= EMIT_INTERVAL_S:
            self._last_emit = now
            self._send(kind="step", epoch=self._epoch, step=step, loss=self._recent_loss(), t=now)
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if not logs or "loss" not in logs or not self.training:
            return
        steps = state.global_step - self._last_logged_step
        self._last_logged_step = state.global_step
        if steps > 0:
            self._losses.append((float(logs["loss"]), steps))
        if state.global_step == 1 and self.first_step_loss is None:
            self.first_step_loss = float(logs["loss"])

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._marks["phase"] = time.perf_counter()

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if not self.training:
            return
        now = time.perf_counter()
        seconds = now - self._marks["phase"]
        self.seconds["evaluating"] += seconds
        self._marks["phase"] = now
        entry: dict[str, float] = {"epoch": self._epoch, "step": state.global_step}
        if self._losses:
            total_steps = sum(n for _, n in self._losses)
            entry["train_loss"] = sum(loss * n for loss, n in self._losses) / total_steps
        entry.update(strip_prefix(metrics or {}, "eval_"))
        self.epochs.append(entry)
        self._send(kind="eval", epoch=self._epoch, metrics=entry, seconds=seconds)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.seconds["checkpointing"] += now - self._marks["phase"]
        self._marks["phase"] = now

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self.seconds["checkpointing"] += now - self._marks["phase"]  # loading the best epoch back
        self.seconds["total"] = now - self._marks["begin"]
        self.seconds["cpu"] = time.process_time() - self._marks["cpu"]
        self.samples = round(self.train_samples * (state.epoch or 0.0))
        self.training = False

    # ---- results -----------------------------------------------------------------------------

    def summary(self) -> dict[str, float | None]:
        """Training figures for metrics.json: samples/s over the time spent in training steps
        (evaluation and checkpoint writes excluded, and reported apart)."""
        training = self.seconds["total"] - self.seconds["evaluating"] - self.seconds["checkpointing"]
        return {
            "first_step_loss": self.first_step_loss,
            "samples": float(self.samples),
            "seconds_total": self.seconds["total"],
            "seconds_training": training,
            "seconds_evaluating": self.seconds["evaluating"],
            "seconds_checkpointing": self.seconds["checkpointing"],
            "samples_per_second": self.samples / training if training > 0 else None,
            # CPU time of this training process, all its threads, evaluation and checkpoints included:
            # a figure that other processes on a shared machine change less than wall time.
            "cpu_seconds_total": self.seconds["cpu"],
        }

    def _recent_loss(self) -> float | None:
        return self._losses[-1][0] if self._losses else None

    def _send(self, **event: Any) -> None:
        if self.emit is not None:
            with contextlib.suppress(Exception):  # progress must never break training (a full queue)
                self.emit(event)


def strip_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """The Trainer's metrics without their prefix ("eval_accuracy" -> "accuracy"), timings left
    out; the loss keeps its prefix ("eval_loss") so that it is not taken for the training loss."""
    out = {}
    for key, value in metrics.items():
        name = key if key == f"{prefix}loss" else key.removeprefix(prefix)
        if isinstance(value, int | float) and name not in _SKIPPED_METRICS:
            out[name] = float(value)
    return out


class Renderer:
    """Draws events on a stream: a bar per epoch on a terminal, plain lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.epochs = 1
        self.steps = 1
        self.batch_size = 1
        self._epoch_t0 = 0.0
        self._next_line = 0
        self._bar_open = False

    def __call__(self, event: Event) -> None:
        kind = event.get("kind")
        if kind == "start":
            self.epochs, self.steps = int(event["epochs"]), int(event["steps_per_epoch"])
            self.batch_size = int(event["batch_size"])
            samples = event["train_samples"]
            self._write(
                f"training on {samples} samples: {self.epochs} epoch(s) of {self.steps} steps, "
                f"batch {self.batch_size}\n"
            )
        elif kind == "epoch":
            self._epoch_t0 = float(event["t"])
            self._next_line = 1
        elif kind == "step":
            self._step(int(event["epoch"]), int(event["step"]), event.get("loss"), float(event["t"]))
        elif kind == "eval":
            self._close_bar()
            metrics = {k: v for k, v in event["metrics"].items() if k not in ("epoch", "step")}
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self._write(
                f"epoch {event['epoch']}/{self.epochs} evaluated in {event['seconds']:.1f}s: {shown}\n"
            )
        elif kind == "note":
            self._close_bar()
            self._write(f"{event['text']}\n")

    def _step(self, epoch: int, step: int, loss: float | None, t: float) -> None:
        elapsed = max(t - self._epoch_t0, 1e-9)
        rate = step * self.batch_size / elapsed
        eta = (self.steps - step) * elapsed / max(step, 1)
        loss_text = f"loss {loss:.4f}" if loss is not None else "loss -"
        stats = f"{step}/{self.steps} {loss_text} {rate:.1f} samples/s ETA {_duration(eta)}"
        if self.tty:
            width = 24
            filled = min(width, int(width * step / self.steps))
            bar = "█" * filled + "·" * (width - filled)
            self._write(f"\repoch {epoch}/{self.epochs} |{bar}| {stats}\x1b[K")
            self._bar_open = True
            return
        if step * PLAIN_LINES_PER_EPOCH >= self._next_line * self.steps:
            while step * PLAIN_LINES_PER_EPOCH >= self._next_line * self.steps:
                self._next_line += 1
            self._write(f"epoch {epoch}/{self.epochs} {stats}\n")

    def _close_bar(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
