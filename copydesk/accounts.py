"""Organisations and API keys: the service the CLI and the HTTP auth layer call."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from copydesk import keys
from copydesk.errors import ApiKeyNotFound, OrganizationNotFound, Unauthenticated
from copydesk.store import ApiKey, Organization, Store


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    organization: Organization
    plaintext: str


class Accounts:
    def __init__(self, store: Store, static_keys: dict[str, str] | None = None) -> None:
        self._store = store
        self._static_keys = dict(static_keys or {})

    async def ensure_organization(self, name: str) -> Organization:
        org = await self._store.get_organization_by_name(name)
        return org if org is not None else await self._store.create_organization(name)

    async def organization(self, name: str) -> Organization:
        org = await self._store.get_organization_by_name(name)
        if org is None:
            raise OrganizationNotFound(name)
        return org

    async def create_key(self, org_name: str, key_name: str = "default") -> NewKey:
        org = await self.ensure_organization(org_name)
        issued = keys.issue_key()
        record = await self._store.create_api_key(
            org.id, key_name, issued.prefix, issued.secret_hash
        )
        return NewKey(key=record, organization=org, plaintext=issued.plaintext)

    async def bootstrap_key(self, org_name: str) -> NewKey | None:
        """On a store with no key at all, create one (to print once); otherwise None."""
        if await self._store.count_api_keys() > 0:
            return None
        return await self.create_key(org_name, "bootstrap")

    async def list_keys(self, org_name: str | None = None) -> list[tuple[ApiKey, Organization]]:
        orgs = {o.id: o for o in await self._store.list_organizations()}
        org_id = (await self.organization(org_name)).id if org_name else None
        return [(k, orgs[k.org_id]) for k in await self._store.list_api_keys(org_id)]

    async def revoke_key(self, key_id_or_prefix: str) -> ApiKey:
        for key in await self._store.list_api_keys():
            if key_id_or_prefix in (key.id, key.prefix):
                revoked = await self._store.revoke_api_key(key.id)
                assert revoked is not None
                return revoked
        raise ApiKeyNotFound(key_id_or_prefix)

    async def authenticate(self, presented: str) -> Organization:
        """The organisation a presented key belongs to; Unauthenticated otherwise.

        One read per request (key and organisation together), with no cache, so a key
        revoked by any process stops working at once."""
        for static, org_name in self._static_keys.items():
            if hmac.compare_digest(static.encode(), presented.encode()):
                return await self.ensure_organization(org_name)
        prefix = keys.prefix_of(presented)
        found = await self._store.find_api_key_with_org(prefix) if prefix else None
        record, org = found if found else (None, None)
        # Hash and compare even when nothing was found, so timing says nothing.
        valid = keys.matches(presented, record.secret_hash if record else "0" * 64)
        if record is None or not valid or record.revoked_at is not None:
            raise Unauthenticated("the API key is missing, unknown or revoked")
        if org is None:
            raise Unauthenticated("the API key's organisation no longer exists")
        return org
