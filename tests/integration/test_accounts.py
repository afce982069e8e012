"""Accounts over a real store: keys shown once, stored hashed, checked on every request."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from copydesk.accounts import Accounts
from copydesk.errors import ApiKeyNotFound, OrganizationNotFound, Unauthenticated
from copydesk.keys import hash_key
from copydesk.stores.sql import SQLStore
from copydesk.stores.tables import api_keys


async def test_create_key_returns_the_plaintext_once_and_stores_only_its_hash(
    store: SQLStore,
) -> None:
    accounts = Accounts(store)

    new = await accounts.create_key("acme", "ci")

    assert new.organization.name == "acme"
    assert (new.key.name, new.key.org_id) == ("ci", new.organization.id)
    assert new.plaintext.startswith(f"cd_{new.key.prefix}_")
    assert new.key.secret_hash == hash_key(new.plaintext)
    secret = new.plaintext.split("_", 2)[2]
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(api_keys))).mappings().all()
    assert len(rows) == 1
    for column, value in rows[0].items():
        assert new.plaintext not in str(value), column
        assert secret not in str(value), column
    assert rows[0]["secret_hash"] == hash_key(new.plaintext)
    # Nothing the store hands back carries the plaintext either.
    [stored] = await store.list_api_keys()
    assert new.plaintext not in repr(stored)


async def test_create_key_reuses_the_organization(store: SQLStore) -> None:
    accounts = Accounts(store)

    first = await accounts.create_key("acme")
    second = await accounts.create_key("acme", "second")

    assert second.organization == first.organization
    assert second.plaintext != first.plaintext
    assert [o.name for o in await store.list_organizations()] == ["acme"]


async def test_authenticate_returns_the_key_organization(store: SQLStore) -> None:
    accounts = Accounts(store)
    acme = await accounts.create_key("acme")
    globex = await accounts.create_key("globex")

    assert await accounts.authenticate(acme.plaintext) == acme.organization
    assert await accounts.authenticate(globex.plaintext) == globex.organization


async def test_a_revoked_key_is_refused(store: SQLStore) -> None:
    accounts = Accounts(store)
    new = await accounts.create_key("acme")
    kept = await accounts.create_key("acme", "kept")

    revoked = await accounts.revoke_key(new.key.id)

    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(new.plaintext)
    assert await accounts.authenticate(kept.plaintext) == kept.organization


async def test_revoke_by_prefix_and_unknown_key(store: SQLStore) -> None:
    accounts = Accounts(store)
    new = await accounts.create_key("acme")

    assert (await accounts.revoke_key(new.key.prefix)).id == new.key.id
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(new.plaintext)
    with pytest.raises(ApiKeyNotFound):
        await accounts.revoke_key("no-such-key")


async def test_unknown_and_malformed_keys_are_refused(store: SQLStore) -> None:
    accounts = Accounts(store)
    new = await accounts.create_key("acme")
    secret = new.plaintext.split("_", 2)[2]
    presented = [
        "",
        "nonsense",
        "Bearer " + new.plaintext,
        new.plaintext + "x",
        new.plaintext[:-1],
        new.key.secret_hash,
        f"cd_{new.key.prefix}_{secret[::-1]}",  # right prefix, wrong secret
        f"cd_000000000000_{secret}",  # unknown prefix, right secret
        f"cd_{new.key.prefix}",
    ]

    for key in presented:
        with pytest.raises(Unauthenticated):
            await accounts.authenticate(key)


async def test_bootstrap_key_only_on_a_store_without_keys(store: SQLStore) -> None:
    accounts = Accounts(store)

    first = await accounts.bootstrap_key("acme")

    assert first is not None
    assert (first.key.name, first.organization.name) == ("bootstrap", "acme")
    assert await accounts.authenticate(first.plaintext) == first.organization
    assert await accounts.bootstrap_key("acme") is None
    assert await accounts.bootstrap_key("other") is None
    assert await store.count_api_keys() == 1


async def test_bootstrap_key_counts_revoked_keys(store: SQLStore) -> None:
    accounts = Accounts(store)
    new = await accounts.create_key("acme")
    await accounts.revoke_key(new.key.id)

    assert await accounts.bootstrap_key("acme") is None
    assert await store.count_api_keys() == 1


async def test_static_keys_map_to_an_organization(store: SQLStore) -> None:
    accounts = Accounts(store, static_keys={"static-acme": "acme", "static-globex": "globex"})

    acme = await accounts.authenticate("static-acme")
    again = await accounts.authenticate("static-acme")
    globex = await accounts.authenticate("static-globex")

    assert acme.name == "acme"
    assert again == acme
    assert globex.name == "globex"
    assert await store.get_organization_by_name("acme") == acme
    with pytest.raises(Unauthenticated):
        await accounts.authenticate("static-acm")
    with pytest.raises(Unauthenticated):
        await accounts.authenticate("static-acme ")
    # Static keys are not stored as keys.
    assert await store.count_api_keys() == 0


async def test_static_keys_and_stored_keys_work_side_by_side(store: SQLStore) -> None:
    accounts = Accounts(store, static_keys={"static-acme": "acme"})
    stored = await accounts.create_key("acme")

    assert await accounts.authenticate("static-acme") == stored.organization
    assert await accounts.authenticate(stored.plaintext) == stored.organization


async def test_list_keys_per_organization(store: SQLStore) -> None:
    accounts = Accounts(store)
    a = await accounts.create_key("acme")
    g = await accounts.create_key("globex")

    assert [(k.id, o.name) for k, o in await accounts.list_keys()] == [
        (a.key.id, "acme"),
        (g.key.id, "globex"),
    ]
    assert [k.id for k, _ in await accounts.list_keys("globex")] == [g.key.id]
    with pytest.raises(OrganizationNotFound):
        await accounts.list_keys("initech")
