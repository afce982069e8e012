"""Composition: ``App(settings)`` builds every part; ``async with app`` opens and closes them.

The ASGI lifespan, the worker and the CLI all use this same open/close.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

from copydesk.accounts import Accounts
from copydesk.attachments import Attachments
from copydesk.backlog import Backlog
from copydesk.batching import Batches
from copydesk.blobs import BlobStore
from copydesk.blobs.local import LocalBlobStore
from copydesk.catalog import Catalog
from copydesk.config import Settings
from copydesk.fetching import UrlFetcher
from copydesk.flow import FlowControl, Limits, LocalSlots, MemoryFlowControl, Slots
from copydesk.generation import Generator
from copydesk.idempotency import Idempotency
from copydesk.jobs import RetryPolicy
from copydesk.library import Library
from copydesk.migrations import upgrade_to_head
from copydesk.provider import ProviderRegistry, Providers
from copydesk.queue import Queue
from copydesk.stores.batches import SQLBatchStore
from copydesk.stores.idempotency import SQLIdempotencyStore
from copydesk.stores.sql import SQLFileStore, SQLJobStore, SQLStore
from copydesk.stores.webhooks import SQLWebhookStore
from copydesk.subscriptions import Courier, Subscriptions
from copydesk.webhooks import DeliveryPolicy
from copydesk.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from copydesk.blobs.s3 import S3BlobStore

log = logging.getLogger("copydesk.app")


class App:
    def __init__(self, settings: Settings, *, registry: ProviderRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or ProviderRegistry().load_entry_points()
        self.store = SQLStore(settings.resolved_database_url)
        self.jobs = SQLJobStore(self.store)
        self.providers = Providers(self.registry, settings)
        self.accounts = Accounts(self.store, settings.static_keys)
        self.catalog = Catalog(self.store, self.providers)
        self.files = SQLFileStore(self.store)
        self.webhook_store = SQLWebhookStore(self.store)
        self.subscriptions = Subscriptions(
            self.webhook_store, settings.webhook_allow, self._delivery_policy()
        )
        self.idempotency = Idempotency(
            SQLIdempotencyStore(self.store),
            ttl_s=settings.idempotency_ttl_s,
            lease_s=settings.idempotency_lease_s,
            wait_s=settings.idempotency_wait_s,
        )
        self._s3_blobs: S3BlobStore | None = None
        self.blobs = self._build_blobs()
        self.queue = self._build_queue()
        self.library = Library(
            self.files, self.blobs, settings.max_upload_bytes, dispatch=self.queue.file_hook
        )
        self.flow = self._build_flow()
        self.slots = self._build_slots()
        self.attachments = Attachments(
            self.files,
            self.blobs,
            UrlFetcher(settings.url_fetch_allow, settings.url_fetch_timeout_s),
            wait_s=settings.file_wait_s,
        )
        self.generator = Generator(self.store, self.catalog, self.providers, self.attachments)
        self.backlog = Backlog(
            self.jobs,
            self.catalog,
            self.generator,
            self.queue,
            settings.max_attempts,
            settings.jobs_page_max,
        )
        self.batches = Batches(
            SQLBatchStore(self.store),
            self.catalog,
            self.generator,
            self.queue,
            settings.max_attempts,
            settings.batch_max_rows,
            settings.jobs_page_max,
        )

    def _concurrency(self) -> dict[str, int]:
        return {name: p.max_concurrency for name, p in self.settings.providers.items()}

    def _limits(self) -> dict[str, Limits]:
        return {
            name: Limits(p.requests_per_minute, p.tokens_per_minute)
            for name, p in self.settings.providers.items()
        }

    def _build_queue(self) -> Queue:
        if self.settings.resolved_engine == "pgqueuer":
            from copydesk.engines.pgqueuer import PgQueuerQueue

            return PgQueuerQueue(self.store, self._concurrency(), self.settings)
        from copydesk.engines.embedded import EmbeddedQueue

        concurrency = self._concurrency()
        return EmbeddedQueue(
            self.jobs,
            concurrency,
            lease_s=self.settings.lease_s,
            poll_interval_s=self.settings.poll_interval_s,
            prefetch={p: self.settings.prefetch(n) for p, n in concurrency.items()},
        )

    def _build_slots(self) -> Slots:
        """Provider concurrency held while a call is in flight. Both engines pick jobs
        ahead (``provider_prefetch``): the embedded engine keeps its slots in this
        process; PgQueuer's workers share theirs in PostgreSQL (one connection each,
        opened on first use)."""
        if self.settings.resolved_engine != "pgqueuer":
            return LocalSlots(self._concurrency())
        from copydesk.engines.pgqueuer import dsn_of
        from copydesk.limiters.slots import PostgresSlots

        return PostgresSlots(dsn_of(self.store.url), self._concurrency())

    def _build_blobs(self) -> BlobStore:
        b = self.settings.blobs
        if b.kind == "s3":
            from copydesk.blobs.s3 import MiB, S3BlobStore

            assert b.s3_bucket  # checked by BlobSettings
            self._s3_blobs = S3BlobStore(
                b.s3_bucket,
                prefix=b.s3_prefix,
                endpoint_url=b.s3_endpoint_url,
                region=b.s3_region,
                access_key_id=b.s3_access_key_id,
                secret_access_key=(
                    b.s3_secret_access_key.get_secret_value() if b.s3_secret_access_key else None
                ),
                session_token=(
                    b.s3_session_token.get_secret_value() if b.s3_session_token else None
                ),
                part_size=b.s3_part_size_mb * MiB,
            )
            return self._s3_blobs
        return LocalBlobStore(self.settings.files_dir)

    def _build_flow(self) -> FlowControl:
        limits = self._limits()
        if self.settings.is_sqlite:
            return MemoryFlowControl(limits)
        from copydesk.limiters.postgres import PostgresFlowControl

        return PostgresFlowControl(self.store, limits)

    def _delivery_policy(self) -> DeliveryPolicy:
        s = self.settings
        return DeliveryPolicy(
            backoff_s=tuple(s.webhook_backoff_s), max_attempts=s.webhook_max_attempts
        )

    def courier(self) -> Courier:
        """A webhook delivery loop (each worker runs one)."""
        s = self.settings
        return Courier(
            self.webhook_store,
            self._delivery_policy(),
            s.webhook_allow,
            timeout_s=s.webhook_timeout_s,
            poll_s=s.webhook_poll_s,
        )

    def worker(self, owner: str | None = None) -> Worker:
        s = self.settings
        options = WorkerOptions(
            lease_s=s.lease_s,
            shutdown_grace_s=s.shutdown_grace_s,
            policy=RetryPolicy(
                max_attempts=s.max_attempts,
                base_delay_s=s.retry_base_delay_s,
                max_delay_s=s.retry_max_delay_s,
            ),
            files_poll_s=min(1.0, s.poll_interval_s),
            files_sweep_s=s.files_sweep_s,
        )
        return Worker(
            self.jobs,
            self.queue,
            self.generator,
            self.flow,
            options,
            owner,
            library=self.library,
            courier=self.courier(),
            slots=self.slots,
        )

    async def open(self, *, migrate: bool = True) -> None:
        if self.settings.is_sqlite and self.settings.database_url is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if migrate:
            await upgrade_to_head(self.store.engine)
        await self.queue.open()
        if self._s3_blobs is not None:
            await self._s3_blobs.connect()

    async def close(self) -> None:
        await self.queue.close()
        await self.flow.close()
        await self.slots.close()
        await self.providers.close()
        if self._s3_blobs is not None:
            await self._s3_blobs.close()
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
