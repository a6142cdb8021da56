"""Served models: each a tokenizer, a replica pool, a router and one batcher per task; the
registry that finds a request's model by name or by its task's default."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bertserve.server.checkpoint import Checkpoint
from bertserve.server.domain import RequestLimits
from bertserve.server.errors import InvalidInput, ModelNotFound, TaskNotSupported
from bertserve.server.logs import get_logger
from bertserve.server.metrics import Metrics, note_model
from bertserve.server.scheduling.admission import Admission, AdmissionLimits, Pushback
from bertserve.server.scheduling.autoscaler import AutoscaleLimits, AutoscalePolicy
from bertserve.server.scheduling.batcher import Batcher, BatchLimits
from bertserve.server.scheduling.estimate import ThroughputMeter
from bertserve.server.scheduling.router import Router
from bertserve.server.scheduling.work import BatchCodec
from bertserve.server.tasks.definition import ModelView
from bertserve.server.tasks.registry import DEFINITIONS
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.heads import TASK_NAMES, names
from bertserve.workers.pool import MAX_REPLICAS, ReplicaPool
from bertserve.workers.protocol import Task

_log = get_logger(component="models")
# How often an autoscaled model's queue is sampled, in seconds.
AUTOSCALE_TICK_S = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """A model as configured and as its checkpoint describes itself (config.json).

    tasks: what the checkpoint's architecture can serve (replicas may narrow it at start when
      head weights are missing). labels: id2label in output order (classification heads).
    """

    name: str
    checkpoint: Checkpoint
    device: str
    dtype: str
    limits: RequestLimits
    batch_limits: BatchLimits
    batches_per_replica: int
    tasks: tuple[Task, ...] = (Task.FILL_MASK, Task.NEXT_SENTENCE, Task.EMBED, Task.TOKENIZE)
    architecture: str = ""
    labels: tuple[str, ...] = ()
    problem_type: str = ""
    demo: bool = False
    description: str = ""
    admission_limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    replica_choice: str = "warm"  # Settings.replica_choice
    autoscale: AutoscaleLimits = field(default_factory=AutoscaleLimits)


def _codecs(tokenizer: TextTokenizer) -> dict[Task, BatchCodec]:
    """Each replica task's collate and split (server/tasks), for the batchers."""
    return {task: d.codec(tokenizer.pad_token_id) for task, d in DEFINITIONS.items()}


def _depth_of(batcher: Batcher) -> Callable[[], int]:
    return lambda: batcher.queued


class ServedModel:
    """A model's pool, router, batchers and admission. It follows the pool's events
    (`replicas_changed`), and the pool reads the replicas' load from the router.

    `clock` is the monotonic clock of the model's scheduling (router, batchers, retry hints,
    autoscaling), injected so that tests control time; it must be the event loop's time (as
    time.monotonic is), since their timers run on the loop."""

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: TextTokenizer,
        pool: ReplicaPool,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        # What the task steps read of this model (tokenizer, limits, labels): fixed at start-up.
        self.view = ModelView(tokenizer, config.limits, config.labels, config.problem_type)
        self.pool = pool
        self._clock = clock
        self.router = Router(
            pool,
            depth=config.batches_per_replica,
            prefer_warm=config.replica_choice == "warm",
            ready_eta=pool.expected_ready_at,
            clock=clock,
        )
        pool.subscribe(self.replicas_changed)
        pool.set_load_view(self.router)
        # What the replicas get through, over every task: the rate that retry hints divide by.
        self.throughput = ThroughputMeter(clock=clock)
        self.batchers = {
            task: Batcher(
                f"{config.name}:{task.value}",
                codec,
                self.router,
                config.batch_limits,
                None if metrics is None else metrics.batcher(config.name, task.value),
                throughput=self.throughput,
                retry_after_ms=self.retry_after_ms,
                clock=clock,
            )
            for task, codec in _codecs(tokenizer).items()
            if task in config.tasks
        }
        self.pushback = Pushback(
            work_tokens=lambda: self.queued_tokens + self.throughput.tokens_at_replicas,
            inflight=lambda: self.admission.inflight,
            rate=self.throughput.rate,
            clock=clock,
        )
        # Every request of a task that uses replicas is admitted here first (dataplane.py).
        self.admission = Admission(
            config.admission_limits,
            queued_tokens=lambda: self.queued_tokens,
            retry_after_ms=self.retry_after_ms,
            metrics=None if metrics is None else metrics.admission(config.name),
        )
        if metrics is not None:
            for task, batcher in self.batchers.items():
                metrics.watch_queue(config.name, task.value, _depth_of(batcher))
            metrics.watch_replicas(config.name, lambda: [r.state.value for r in pool.replicas()])
            metrics.watch_admission(
                config.name, lambda: self.admission.inflight, lambda: self.admission.queued_tokens
            )
        self.tasks: tuple[Task, ...] = config.tasks
        self._autoscaler: asyncio.Task[None] | None = None
        self._policy = AutoscalePolicy(config.autoscale, clock())
        self._first_ready = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    def retry_after_ms(self) -> int:
        """The retry hint of one rejection (admission limits or a full queue), in milliseconds: the
        work ahead of it over the rate the replicas got through recently (admission.Pushback)."""
        return self.pushback.reject()

    async def start(self, timeout_s: float) -> None:
        """Start the replicas; serve as soon as the first is warm (health turns SERVING then),
        and return once every one is. Raises ReplicaLoadError as `ReplicaPool.start` does."""
        warming = asyncio.get_running_loop().create_task(self.pool.start(timeout_s))
        first = asyncio.get_running_loop().create_task(self._first_ready.wait())
        try:
            await asyncio.wait({warming, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
        if not warming.done() or warming.exception() is None:
            self._serve()
        await warming
        if self.config.autoscale.enabled:
            self._policy.note_scaled(self._clock())
            self._autoscaler = asyncio.get_running_loop().create_task(self._autoscale_loop())

    def _serve(self) -> None:
        """Start the batchers of the tasks the first warm replica reports it can serve."""
        reports = [r.report for r in self.pool.replicas() if r.report is not None]
        if reports:
            self.tasks = (*(t for t in reports[0].tasks if t in self.config.tasks), Task.TOKENIZE)
        for task, batcher in self.batchers.items():
            if task in self.tasks:
                batcher.start()

    @property
    def queued_tokens(self) -> int:
        return sum(b.queued_tokens for b in self.batchers.values())

    async def scale(self, replicas: int, *, wait: bool = False) -> None:
        """Operator scaling (AdminService.ScaleModel). Raises InvalidInput for a count out of range."""
        lim = self.config.autoscale
        low, high = (lim.floor, lim.max_replicas) if lim.enabled else (1, MAX_REPLICAS)
        if not low <= replicas <= high:
            where = "its min_replicas..max_replicas" if lim.enabled else "the allowed range"
            raise InvalidInput(f"model {self.name!r}: replicas must be within {where}, {low}..{high}")
        self._policy.note_scaled(self._clock())
        await self.pool.scale_to(replicas, wait=wait)

    async def _autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(AUTOSCALE_TICK_S)
            current = self.pool.target
            queued = self.queued_tokens
            wanted = self._policy.decide(
                self._clock(),
                current=current,
                ready=self.pool.ready_count,
                queued_tokens=queued,
                idle=queued == 0 and self.router.has_idle_replica(),
            )
            if wanted is None or wanted == current:
                continue
            _log.info("autoscaling", model=self.name, replicas=wanted, previous=current)
            try:
                await self.pool.scale_to(wanted)
            except (ValueError, RuntimeError) as exc:
                _log.warning("autoscaling_failed", model=self.name, error=str(exc))

    async def stop(self) -> None:
        if self._autoscaler is not None:
            self._autoscaler.cancel()
            await asyncio.gather(self._autoscaler, return_exceptions=True)
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.pool.stop()

    def replicas_changed(self) -> None:
        """Pool subscription: the router updates its records and wakes its waiters, and the
        batchers fail, with no replica ready, the queued requests that cannot wait for one
        (Batcher.replicas_changed)."""
        if self.pool.ready_count:
            self._first_ready.set()
        self.router.replicas_changed()
        for batcher in self.batchers.values():
            batcher.replicas_changed()

    def serves(self, task: Task) -> bool:
        return task in self.tasks

    def check_serves(self, task: Task) -> None:
        if task not in self.tasks:
            raise TaskNotSupported(
                f"model {self.name!r} does not serve {TASK_NAMES[task]}; it serves {names(self.tasks)}"
            )

    def batcher(self, task: Task) -> Batcher:
        self.check_serves(task)
        return self.batchers[task]

    @property
    def dtype(self) -> str:
        """What the replicas run ("auto" resolves in each replica: see workers/backends/probes.py)."""
        reports = [r.report for r in self.pool.replicas() if r.report is not None]
        return reports[0].dtype if reports else self.config.dtype

    @property
    def ready_replicas(self) -> int:
        return self.pool.ready_count


class ModelRegistry:
    """The models of one server. Each task has a default model: the one the configuration
    names for it, else the first model (in configuration order) that serves it."""

    def __init__(self, models: Sequence[ServedModel], defaults: Mapping[Task, str] | None = None) -> None:
        self._models = {m.name: m for m in models}
        self._order = list(models)
        self._explicit = dict(defaults or {})
        self._defaults: dict[Task, ServedModel] = {}
        self.refresh_defaults()

    def refresh_defaults(self) -> None:
        """Recompute the per-task defaults (after models start and report their tasks).
        Raises ValueError when a configured default cannot serve its task."""
        defaults: dict[Task, ServedModel] = {}
        for task in Task:
            name = self._explicit.get(task)
            if name is not None:
                model = self._models.get(name)
                if model is None:
                    raise ValueError(f"the default model for {TASK_NAMES[task]}, {name!r}, is not configured")
                if not model.serves(task):
                    raise ValueError(
                        f"the default model for {TASK_NAMES[task]}, {name!r}, does not serve it; "
                        f"it serves {names(model.tasks)}"
                    )
                defaults[task] = model
                continue
            serving = [m for m in self._order if m.serves(task)]
            if serving:
                defaults[task] = serving[0]
        self._defaults = defaults

    @property
    def first(self) -> ServedModel:
        return self._order[0]

    def named(self, name: str) -> ServedModel:
        """The model of that name; empty selects the first model."""
        if not name:
            return self._chosen(self.first)
        model = self._models.get(name)
        if model is None:
            # The name comes from the request: shown cut short, so that a hostile one cannot bloat
            # the status message past gRPC's metadata limit (the client would get RESOURCE_EXHAUSTED).
            shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}... ({len(name)} characters)"
            raise ModelNotFound(f"no model named {shown} is served; ListModels shows the names")
        return self._chosen(model)

    def get(self, name: str, task: Task) -> ServedModel:
        """The model for a request: by name (which must serve the task), else the task's default."""
        if name:
            model = self.named(name)
            model.check_serves(task)
            return model
        default = self._defaults.get(task)
        if default is None:
            served = sorted({t for m in self._order for t in m.tasks}, key=list(Task).index)
            raise TaskNotSupported(
                f"no model on this server serves {TASK_NAMES[task]}; its models serve {names(served)}"
            )
        return self._chosen(default)

    @staticmethod
    def _chosen(model: ServedModel) -> ServedModel:
        """Note the request's model for its metrics (metrics.current_model)."""
        note_model(model.name)
        return model

    def default_for(self, model: ServedModel) -> tuple[Task, ...]:
        return tuple(t for t, m in self._defaults.items() if m is model)

    def all(self) -> list[ServedModel]:
        return list(self._order)

    def all_serving(self) -> bool:
        """True when every model has at least one warm replica."""
        return bool(self._models) and all(m.ready_replicas > 0 for m in self._order)
