"""Micro-batching: concurrent requests share one model call, and those of one tenant (and the same options) one
search of its index."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from starlette.concurrency import run_in_threadpool


class QueryBatcher:
    """Collects the queries of requests that arrive within `max_wait_s` of the first one (at most `max_texts`),
    embeds them all in one call on the model's own thread, then searches each group (requests with the same
    `group`: one tenant, top_k and options) with one call of `search(group, queries, vectors)` on a worker thread,
    and hands each request its answers. While the model or the searches are busy, what arrives meanwhile waits for
    the next round, so under load the batches grow without any wait being added."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], search: Callable[[Hashable, list[str], np.ndarray],
                 list], max_wait_s: float = 0.002, max_texts: int = 64, observe: Callable[[int], None] | None = None):
        self._embed = embed
        self._search = search
        self._max_wait_s = max_wait_s
        self._max_texts = max_texts
        self._observe = observe
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._searches: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, group: Hashable, texts: list[str], embed: bool = True) -> list:
        """The answers of `texts` (one list of hits each), computed with whatever other requests are waiting.
        With `embed` false (a keyword search) the texts skip the model and `search` gets None for their vectors;
        requests of one group must agree on it."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((group, texts, future, embed))
        return await future

    async def _collect(self) -> list[tuple]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        count = len(batch[0][1])
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
            count += len(item[1])
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            texts = [text for _, item, _, embed in batch if embed for text in item]
            vectors = None
            if texts:
                try:
                    vectors = await loop.run_in_executor(self._executor, self._embed, texts)
                except Exception as exc:  # every waiting request gets the failure (it answers 503 or 500)
                    for _, _, future, _ in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                if self._observe:
                    self._observe(len(texts))
            groups: dict[Hashable, list] = {}
            start = 0
            for group, item, future, embed in batch:
                share = vectors[start:start + len(item)] if embed else None
                groups.setdefault(group, []).append((item, share, future))
                start += len(item) if embed else 0
            for group, items in groups.items():
                task = loop.create_task(self._answer(group, items))
                self._searches.add(task)
                task.add_done_callback(self._searches.discard)

    async def _answer(self, group: Hashable, items: list) -> None:
        queries = [text for item, _, _ in items for text in item]
        try:
            shares = [v for _, v, _ in items if v is not None]
            answers = await run_in_threadpool(self._search, group, queries, np.concatenate(shares) if shares else None)
        except Exception as exc:
            for _, _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for item, _, future in items:
            if not future.done():
                future.set_result(answers[start:start + len(item)])
            start += len(item)
