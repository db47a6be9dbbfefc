"""Micro-batching: the queries of concurrent requests embedded in one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class EmbeddingBatcher:
    """Collects the texts of requests that arrive within `max_wait_s` of the first one (at most `max_texts`), embeds
    them in one call on the model's own thread, and hands each request its rows. While the model is busy, what
    arrives meanwhile waits for the next call, so under load the batches grow without any wait being added."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], max_wait_s: float = 0.002, max_texts: int = 64,
                 observe: Callable[[int], None] | None = None):
        self._embed = embed
        self._max_wait_s = max_wait_s
        self._max_texts = max_texts
        self._observe = observe
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self.calls = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts`, computed together with whatever other requests are waiting."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((texts, future))
        return await future

    async def _collect(self) -> list[tuple[list[str], asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        count = len(batch[0][0])
        deadline = loop.time() + self._max_wait_s
        while count < self._max_texts:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            count += len(item[0])
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            texts = [text for item, _ in batch for text in item]
            try:
                vectors = await loop.run_in_executor(self._executor, self._embed, texts)
            except Exception as exc:  # every waiting request gets the failure (it answers 503 or 500)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.calls += 1
            if self._observe:
                self._observe(len(texts))
            start = 0
            for item, future in batch:
                if not future.done():
                    future.set_result(vectors[start:start + len(item)])
                start += len(item)
