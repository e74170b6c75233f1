"""Watch the config file and hand each valid new version to a callback.

Polling (mtime, size) keeps this dependency-free and works on every filesystem, including
Kubernetes ConfigMap volumes, where the file is replaced through a symlink swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from mixroute.config.loader import ConfigError, load_config_file
from mixroute.config.schema import MixrouteConfig

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        interval_s: float,
        on_config: Callable[[MixrouteConfig], Awaitable[None]],
        on_rejected: Callable[[ConfigError], None],
    ) -> None:
        self._path = path
        self._interval_s = interval_s
        self._on_config = on_config
        self._on_rejected = on_rejected
        self._signature = self._stat()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            signature = await asyncio.to_thread(self._stat)
            if signature is None or signature == self._signature:
                continue
            self._signature = signature
            await self.reload()

    async def reload(self) -> None:
        try:
            config = await asyncio.to_thread(load_config_file, self._path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config:\n%s", exc)
            self._on_rejected(exc)
            return
        await self._on_config(config)
        log.info("config reloaded from %s", self._path)
