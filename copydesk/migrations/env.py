"""Alembic environment: runs on the connection Copydesk hands over (no URL of its own)."""

from __future__ import annotations

from alembic import context

from copydesk.stores.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Copydesk migrations run through `copydesk db upgrade` (or at start-up), "
        "which passes the connection; the bare alembic CLI is not wired to a URL"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
