"""Served models: each a tokenizer, a replica pool, a router and one batcher per task."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bertserve.server.checkpoint import Checkpoint
from bertserve.server.domain import RequestLimits
from bertserve.server.errors import ModelNotFound, TaskNotSupported
from bertserve.server.scheduling.batcher import Batcher, BatchLimits, Kernel
from bertserve.server.scheduling.router import Router
from bertserve.server.tasks.fill_mask import FillMaskKernel
from bertserve.server.tasks.next_sentence import NextSentenceKernel
from bertserve.server.tokenization import TextTokenizer
from bertserve.workers.pool import ReplicaPool
from bertserve.workers.protocol import Task

TASK_NAMES = {Task.FILL_MASK: "FillMask", Task.NEXT_SENTENCE: "NextSentence"}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    checkpoint: Checkpoint
    device: str
    dtype: str
    limits: RequestLimits
    batch_limits: BatchLimits
    batches_per_replica: int
    demo: bool = False
    description: str = ""


class ServedModel:
    def __init__(self, config: ModelConfig, tokenizer: TextTokenizer, pool: ReplicaPool) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.pool = pool
        self.router = Router(pool, depth=config.batches_per_replica)
        kernels: dict[Task, Kernel] = {
            Task.FILL_MASK: FillMaskKernel(tokenizer.pad_token_id),
            Task.NEXT_SENTENCE: NextSentenceKernel(tokenizer.pad_token_id),
        }
        self.batchers = {
            task: Batcher(f"{config.name}:{task.value}", kernel, self.router, config.batch_limits)
            for task, kernel in kernels.items()
        }
        self.tasks: tuple[Task, ...] = ()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self, timeout_s: float) -> None:
        await self.pool.start(timeout_s)
        reports = [r.report for r in self.pool.replicas() if r.report is not None]
        self.tasks = reports[0].tasks if reports else ()
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.pool.stop()

    def replicas_changed(self) -> None:
        """Pool callback: wake the router and the batchers."""
        task = asyncio.get_running_loop().create_task(self.router.notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        for batcher in self.batchers.values():
            batcher.wake()

    def batcher(self, task: Task) -> Batcher:
        if task not in self.tasks:
            served = ", ".join(TASK_NAMES[t] for t in self.tasks) or "nothing"
            raise TaskNotSupported(
                f"model {self.name!r} does not serve {TASK_NAMES[task]}; it serves {served}"
            )
        return self.batchers[task]

    @property
    def ready_replicas(self) -> int:
        return self.pool.ready_count


class ModelRegistry:
    def __init__(self, models: list[ServedModel], default: str) -> None:
        self._models = {m.name: m for m in models}
        self.default = default

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name or self.default)
        if model is None:
            raise ModelNotFound(f"no model named {name!r} is served; ListModels shows the names")
        return model

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def all_serving(self) -> bool:
        """True when every model has at least one warm replica."""
        return bool(self._models) and all(m.ready_replicas > 0 for m in self._models.values())
