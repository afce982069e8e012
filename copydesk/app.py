"""Composition: ``App(settings)`` builds every part; ``async with app`` opens and closes them.

The ASGI lifespan, the worker and the CLI all use this same open/close.
"""

from __future__ import annotations

import logging
from types import TracebackType

from copydesk.accounts import Accounts
from copydesk.catalog import Catalog
from copydesk.config import Settings
from copydesk.generation import Generator
from copydesk.migrations import upgrade_to_head
from copydesk.provider import ProviderRegistry, Providers
from copydesk.store import Store
from copydesk.stores.sql import SQLStore

log = logging.getLogger("copydesk.app")


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ProviderRegistry | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or ProviderRegistry().load_entry_points()
        self.store: Store = store if store is not None else SQLStore(settings.resolved_database_url)
        self.providers = Providers(self.registry, settings)
        self.accounts = Accounts(self.store, settings.static_keys)
        self.catalog = Catalog(self.store, self.providers)
        self.generator = Generator(self.store, self.catalog, self.providers)

    async def open(self, *, migrate: bool = True) -> None:
        if self.settings.is_sqlite and self.settings.database_url is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if migrate and isinstance(self.store, SQLStore):
            await upgrade_to_head(self.store.engine)

    async def close(self) -> None:
        await self.providers.close()
        await self.store.close()

    async def __aenter__(self) -> App:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
