"""Work done once per key on a worker thread: the first CUDA build of a kernel configuration
compiles its Triton kernels there while the caller takes the torch path (no JIT)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Once:
    """Each key's function runs once, on one worker thread, in the order first asked."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Hashable, Future[Any]] = {}

    def done(self, key: Hashable, fn: Callable[[], Any], wait: bool = False) -> bool:
        """Whether ``fn`` has run for ``key``, starting it if it has not begun; ``wait`` blocks
        until it has. An exception it raised is raised here, on each call."""
        future = self._futures.get(key)
        if future is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="maskspec-jit")
            future = self._futures[key] = self._pool.submit(fn)
        if wait or future.done():
            future.result()
            return True
        return False
