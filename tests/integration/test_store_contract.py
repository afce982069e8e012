"""The ``Store`` contract, run against every store implementation (SQLite and PostgreSQL).

Only the port's methods are used here: what one store does, every store must do.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from copydesk.agents import AgentSpec, parse_agent
from copydesk.store import Agent, CursorPage, CursorQuery, GenerationRecord, Order, Store

N_AGENTS = 125
ORDERS: tuple[Order, ...] = ("desc", "asc")


def spec(
    agent_id: str, name: str | None = None, prompt: str = "Write about {{ topic }}."
) -> AgentSpec:
    return parse_agent(
        {
            "id": agent_id,
            "name": name or f"Agent {agent_id}",
            "prompt": prompt,
            "inputs": [
                {"name": "topic", "input_type": "text", "options": {"max_fields": 3}},
                {"name": "tone", "input_type": "dropdown", "options": {"list": ["dry", "warm"]}},
                {"name": "brief", "input_type": "file", "required": False},
            ],
            "parameters": {"temperature": 0.2, "max_tokens": 64},
        },
        "test",
    )


def ids(page: CursorPage[Agent]) -> list[str]:
    return [agent.id for agent in page.items]


def name(i: int) -> str:
    return f"agent-{i:03d}"


# --- organisations ------------------------------------------------------------------


async def test_create_and_get_organization(store: Store) -> None:
    org = await store.create_organization("acme")

    assert org.name == "acme"
    assert org.created_at.utcoffset() == timedelta(0)
    assert await store.get_organization(org.id) == org
    assert await store.get_organization_by_name("acme") == org
    assert await store.get_organization(str(uuid.uuid4())) is None
    assert await store.get_organization_by_name("Acme") is None


async def test_organization_names_are_unique(store: Store) -> None:
    first = await store.create_organization("acme")

    with pytest.raises(IntegrityError):
        await store.create_organization("acme")

    assert await store.list_organizations() == [first]


async def test_list_organizations_in_creation_order(store: Store) -> None:
    created = [await store.create_organization(n) for n in ("zeta", "alpha", "mid")]

    assert await store.list_organizations() == created


# --- api keys -------------------------------------------------------------------------


async def test_create_and_find_api_key(store: Store) -> None:
    org = await store.create_organization("acme")

    key = await store.create_api_key(org.id, "ci", "a1b2c3d4e5f6", "f" * 64)

    assert (key.org_id, key.name, key.prefix, key.secret_hash) == (
        org.id,
        "ci",
        "a1b2c3d4e5f6",
        "f" * 64,
    )
    assert key.revoked_at is None
    assert await store.find_api_key("a1b2c3d4e5f6") == key
    assert await store.find_api_key("000000000000") is None


async def test_api_key_prefixes_are_unique(store: Store) -> None:
    org = await store.create_organization("acme")
    await store.create_api_key(org.id, "one", "a1b2c3d4e5f6", "1" * 64)

    with pytest.raises(IntegrityError):
        await store.create_api_key(org.id, "two", "a1b2c3d4e5f6", "2" * 64)

    assert await store.count_api_keys() == 1


async def test_list_api_keys_per_organization_and_count(store: Store) -> None:
    acme = await store.create_organization("acme")
    globex = await store.create_organization("globex")
    assert await store.count_api_keys() == 0
    a1 = await store.create_api_key(acme.id, "a1", "aaaaaaaaaaa1", "1" * 64)
    g1 = await store.create_api_key(globex.id, "g1", "bbbbbbbbbbb1", "2" * 64)
    a2 = await store.create_api_key(acme.id, "a2", "aaaaaaaaaaa2", "3" * 64)

    assert await store.list_api_keys(acme.id) == [a1, a2]
    assert await store.list_api_keys(globex.id) == [g1]
    assert await store.list_api_keys() == [a1, g1, a2]
    assert await store.list_api_keys(str(uuid.uuid4())) == []
    assert await store.count_api_keys() == 3


async def test_revoke_api_key_sets_revoked_at_once(store: Store) -> None:
    org = await store.create_organization("acme")
    key = await store.create_api_key(org.id, "ci", "a1b2c3d4e5f6", "f" * 64)
    other = await store.create_api_key(org.id, "other", "0a1b2c3d4e5f", "e" * 64)
    before = datetime.now(UTC)

    revoked = await store.revoke_api_key(key.id)

    assert revoked is not None
    assert revoked.id == key.id
    assert revoked.revoked_at is not None
    assert before - timedelta(seconds=5) <= revoked.revoked_at <= datetime.now(UTC)
    assert await store.find_api_key(key.prefix) == revoked
    # Idempotent: a second revoke keeps the first time.
    assert await store.revoke_api_key(key.id) == revoked
    # Others untouched; revoked keys still count and list.
    assert (await store.find_api_key(other.prefix)) == other
    assert await store.count_api_keys() == 2
    assert await store.list_api_keys(org.id) == [revoked, other]


async def test_revoke_unknown_api_key_returns_none(store: Store) -> None:
    assert await store.revoke_api_key(str(uuid.uuid4())) is None


# --- agents ---------------------------------------------------------------------------


async def test_deploy_creates_version_one(store: Store) -> None:
    org = await store.create_organization("acme")
    definition = spec("welcome", "Welcome email")

    agent = await store.deploy_agent(org.id, definition)

    assert (agent.id, agent.org_id, agent.name) == ("welcome", org.id, "Welcome email")
    assert (agent.status, agent.version) == ("deployed", 1)
    assert agent.spec == definition
    assert agent.graph_ids == []
    assert agent.created_at.utcoffset() == timedelta(0)
    assert agent.last_deployed_at == agent.created_at == agent.updated_at
    assert await store.get_agent(org.id, "welcome") == agent
    assert await store.get_agent(org.id, "welcome", version=1) == agent


async def test_deploy_needs_an_id(store: Store) -> None:
    org = await store.create_organization("acme")

    with pytest.raises(ValueError, match="id"):
        await store.deploy_agent(org.id, spec("x").model_copy(update={"id": None}))

    assert (await store.list_agents(org.id, CursorQuery())).items == []


async def test_redeploy_makes_a_new_version_and_keeps_the_old_one(store: Store) -> None:
    org = await store.create_organization("acme")
    v1_spec = spec("welcome", "Welcome email", "Hello {{ topic }}")
    v1 = await store.deploy_agent(org.id, v1_spec)
    v2_spec = spec("welcome", "Welcome email v2", "Greetings on {{ topic }} in a {{ tone }} tone")

    v2 = await store.deploy_agent(org.id, v2_spec)

    assert (v2.version, v2.name, v2.spec, v2.status) == (2, "Welcome email v2", v2_spec, "deployed")
    assert v2.created_at == v1.created_at
    assert v1.last_deployed_at is not None
    assert v2.last_deployed_at is not None
    assert v2.last_deployed_at > v1.last_deployed_at
    assert await store.get_agent(org.id, "welcome") == v2

    old = await store.get_agent(org.id, "welcome", version=1)
    assert old is not None
    assert (old.version, old.name, old.spec) == (1, "Welcome email", v1_spec)
    assert old.created_at == v1.created_at

    # A third deploy does not touch either earlier version.
    await store.deploy_agent(org.id, spec("welcome", "v3"))
    again = await store.get_agent(org.id, "welcome", version=1)
    assert again is not None
    assert again.spec == v1_spec
    v2_again = await store.get_agent(org.id, "welcome", version=2)
    assert v2_again is not None
    assert v2_again.spec == v2_spec
    assert await store.get_agent(org.id, "welcome", version=4) is None


async def test_get_unknown_agent_returns_none(store: Store) -> None:
    org = await store.create_organization("acme")

    assert await store.get_agent(org.id, "nope") is None
    assert await store.get_agent(org.id, "nope", version=1) is None


async def test_agents_are_isolated_between_organizations(store: Store) -> None:
    acme = await store.create_organization("acme")
    globex = await store.create_organization("globex")
    await store.deploy_agent(acme.id, spec("welcome"))

    assert await store.get_agent(globex.id, "welcome") is None
    assert await store.get_agent(globex.id, "welcome", version=1) is None
    page = await store.list_agents(globex.id, CursorQuery())
    assert (page.items, page.has_more) == ([], False)
    assert await store.set_agent_graphs(globex.id, "welcome", ["g1"]) is None
    mine = await store.get_agent(acme.id, "welcome")
    assert mine is not None
    assert mine.graph_ids == []


async def test_the_same_agent_id_in_two_organizations_is_two_agents(store: Store) -> None:
    acme = await store.create_organization("acme")
    globex = await store.create_organization("globex")
    await store.deploy_agent(acme.id, spec("welcome", "Acme welcome"))
    await store.deploy_agent(acme.id, spec("welcome", "Acme welcome 2"))

    theirs = await store.deploy_agent(globex.id, spec("welcome", "Globex welcome"))

    assert (theirs.org_id, theirs.version, theirs.name) == (globex.id, 1, "Globex welcome")
    mine = await store.get_agent(acme.id, "welcome")
    assert mine is not None
    assert (mine.org_id, mine.version, mine.name) == (acme.id, 2, "Acme welcome 2")
    await store.set_agent_graphs(globex.id, "welcome", ["g-globex"])
    mine = await store.get_agent(acme.id, "welcome")
    assert mine is not None
    assert mine.graph_ids == []
    assert ids(await store.list_agents(acme.id, CursorQuery())) == ["welcome"]
    assert ids(await store.list_agents(globex.id, CursorQuery())) == ["welcome"]


# --- graphs ---------------------------------------------------------------------------


async def test_set_agent_graphs_replaces_the_list(store: Store) -> None:
    org = await store.create_organization("acme")
    await store.deploy_agent(org.id, spec("welcome"))

    assert await store.set_agent_graphs(org.id, "welcome", ["g1", "g2"]) == ["g1", "g2"]
    agent = await store.get_agent(org.id, "welcome")
    assert agent is not None
    assert agent.graph_ids == ["g1", "g2"]

    assert await store.set_agent_graphs(org.id, "welcome", ["g3"]) == ["g3"]
    agent = await store.get_agent(org.id, "welcome")
    assert agent is not None
    assert agent.graph_ids == ["g3"]

    assert await store.set_agent_graphs(org.id, "welcome", []) == []
    agent = await store.get_agent(org.id, "welcome")
    assert agent is not None
    assert agent.graph_ids == []


async def test_graphs_survive_a_redeploy(store: Store) -> None:
    org = await store.create_organization("acme")
    await store.deploy_agent(org.id, spec("welcome"))
    await store.set_agent_graphs(org.id, "welcome", ["g1"])

    v2 = await store.deploy_agent(org.id, spec("welcome", "again"))

    assert v2.graph_ids == ["g1"]


async def test_set_graphs_of_unknown_agent_returns_none(store: Store) -> None:
    org = await store.create_organization("acme")

    assert await store.set_agent_graphs(org.id, "nope", ["g1"]) is None


# --- generations ----------------------------------------------------------------------


def generation(org_id: str, agent_id: str, at: datetime, **changes: Any) -> GenerationRecord:
    record = GenerationRecord(
        id=str(uuid.uuid4()),
        org_id=org_id,
        agent_id=agent_id,
        agent_version=1,
        provider="deterministic",
        model="echo",
        prompt_tokens=12,
        completion_tokens=34,
        latency_ms=56,
        streamed=False,
        created_at=at,
    )
    return dataclasses.replace(record, **changes)


async def test_record_and_list_generations(store: Store) -> None:
    acme = await store.create_organization("acme")
    globex = await store.create_organization("globex")
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    later = generation(acme.id, "welcome", t0 + timedelta(seconds=1), streamed=True)
    # A non-UTC time is the same instant once stored.
    earlier = generation(
        acme.id, "welcome", t0.astimezone(timezone(timedelta(hours=2))), agent_version=2
    )
    other_agent = generation(acme.id, "other", t0)
    other_org = generation(globex.id, "welcome", t0)
    for record in (later, earlier, other_agent, other_org):
        await store.record_generation(record)

    listed = await store.list_generations(acme.id, "welcome")

    assert listed == [earlier, later]
    assert listed[0].created_at.utcoffset() == timedelta(0)
    assert (listed[1].streamed, listed[0].agent_version) == (True, 2)
    assert await store.list_generations(globex.id, "welcome") == [other_org]
    assert await store.list_generations(globex.id, "other") == []


# --- cursor paging (spec section 5) -----------------------------------------------------


@pytest.fixture
async def many(store: Store) -> tuple[Store, str]:
    """N_AGENTS agents deployed in order agent-000 ... agent-124, plus a noisy neighbour."""
    org = await store.create_organization("acme")
    neighbour = await store.create_organization("globex")
    for i in range(N_AGENTS):
        await store.deploy_agent(org.id, spec(name(i)))
        if i % 40 == 0:
            await store.deploy_agent(neighbour.id, spec(f"theirs-{i}"))
    return store, org.id


def listing(order: Order) -> list[str]:
    names = [name(i) for i in range(N_AGENTS)]
    return names[::-1] if order == "desc" else names


async def test_after_walks_forward_through_every_agent(many: tuple[Store, str]) -> None:
    store, org_id = many
    default = await store.list_agents(org_id, CursorQuery())
    assert ids(default) == [name(i) for i in range(124, 74, -1)]
    assert default.has_more is True

    for order in ORDERS:
        seen: list[str] = []
        sizes: list[int] = []
        page = await store.list_agents(org_id, CursorQuery(limit=50, order=order))
        while True:
            seen += ids(page)
            sizes.append(len(page.items))
            if not (page.has_more and page.items):
                break
            page = await store.list_agents(
                org_id, CursorQuery(limit=50, order=order, after=page.items[-1].id)
            )
        assert seen == listing(order), order
        assert sizes == [50, 50, 25], order

        # ``after`` keeps the requested order: the items just past the cursor.
        page = await store.list_agents(org_id, CursorQuery(limit=3, order=order, after=name(50)))
        step = -1 if order == "desc" else 1
        assert ids(page) == [name(50 + step), name(50 + 2 * step), name(50 + 3 * step)], order
        assert page.has_more is True


async def test_before_walks_backward_through_every_agent(many: tuple[Store, str]) -> None:
    store, org_id = many
    for order in ORDERS:
        seen: list[str] = []
        sizes: list[int] = []
        last = listing(order)[-1]
        page = await store.list_agents(org_id, CursorQuery(limit=50, order=order, before=last))
        while True:
            seen = ids(page) + seen
            sizes.append(len(page.items))
            if not (page.has_more and page.items):
                break
            page = await store.list_agents(
                org_id, CursorQuery(limit=50, order=order, before=page.items[0].id)
            )
        assert seen == listing(order)[:-1], order
        assert sizes == [50, 50, 24], order

    # ``before`` returns the items nearest the cursor, in listing order.
    desc = await store.list_agents(org_id, CursorQuery(limit=10, order="desc", before=name(50)))
    asc = await store.list_agents(org_id, CursorQuery(limit=10, order="asc", before=name(50)))
    assert (ids(desc), desc.has_more) == ([name(i) for i in range(60, 50, -1)], True)
    assert (ids(asc), asc.has_more) == ([name(i) for i in range(40, 50)], True)
    # The first item of a listing has nothing before it.
    for order in ORDERS:
        first = listing(order)[0]
        page = await store.list_agents(org_id, CursorQuery(limit=10, order=order, before=first))
        assert (page.items, page.has_more) == ([], False), order


async def test_after_and_before_give_the_range_between(many: tuple[Store, str]) -> None:
    store, org_id = many
    cases: list[tuple[Order, int, int, list[str]]] = [
        ("desc", 100, 90, [name(i) for i in range(99, 90, -1)]),
        ("asc", 90, 100, [name(i) for i in range(91, 100)]),
    ]
    for order, after, before, expected in cases:
        pages = {
            limit: await store.list_agents(
                org_id,
                CursorQuery(limit=limit, order=order, after=name(after), before=name(before)),
            )
            for limit in (50, 9, 5)
        }

        assert (ids(pages[50]), pages[50].has_more) == (expected, False), order
        assert (ids(pages[9]), pages[9].has_more) == (expected, False), order
        assert (ids(pages[5]), pages[5].has_more) == (expected[:5], True), order

    # Cursors the wrong way round enclose nothing.
    page = await store.list_agents(
        org_id, CursorQuery(order="desc", after=name(90), before=name(100))
    )
    assert (page.items, page.has_more) == ([], False)


async def test_unknown_cursor_gives_an_empty_page(many: tuple[Store, str]) -> None:
    store, org_id = many
    queries = [
        CursorQuery(after="made-up"),
        CursorQuery(before="made-up"),
        CursorQuery(order="asc", after="made-up"),
        CursorQuery(order="asc", before="made-up"),
        CursorQuery(after=name(10), before="made-up"),
        CursorQuery(after="made-up", before=name(10)),
        # An id of another organisation's agent is as unknown as a made-up one.
        CursorQuery(after="theirs-40"),
        CursorQuery(before="theirs-40"),
    ]
    for query in queries:
        page = await store.list_agents(org_id, query)
        assert (page.items, page.has_more) == ([], False), query


async def test_has_more_at_the_limit_boundary(many: tuple[Store, str]) -> None:
    store, org_id = many
    for order in ORDERS:
        # Ten agents lie beyond the cursor in listing order.
        cursor = listing(order)[-11]
        rest = listing(order)[-10:]

        exact = await store.list_agents(org_id, CursorQuery(limit=10, order=order, after=cursor))
        short = await store.list_agents(org_id, CursorQuery(limit=9, order=order, after=cursor))
        roomy = await store.list_agents(org_id, CursorQuery(limit=11, order=order, after=cursor))
        everything = await store.list_agents(org_id, CursorQuery(limit=N_AGENTS, order=order))
        all_but_one = await store.list_agents(org_id, CursorQuery(limit=N_AGENTS - 1, order=order))

        assert (ids(exact), exact.has_more) == (rest, False), order
        assert (ids(short), short.has_more) == (rest[:9], True), order
        assert (ids(roomy), roomy.has_more) == (rest, False), order
        assert (ids(everything), everything.has_more) == (listing(order), False), order
        assert (ids(all_but_one), all_but_one.has_more) == (listing(order)[:-1], True), order

    # limit=0: no items; has_more says whether any lie beyond the (empty) page.
    empty_org = await store.create_organization("empty")
    page = await store.list_agents(org_id, CursorQuery(limit=0))
    beyond = await store.list_agents(org_id, CursorQuery(limit=0, after=name(0)))
    nothing = await store.list_agents(empty_org.id, CursorQuery(limit=0))
    assert (page.items, page.has_more) == ([], True)
    assert (beyond.items, beyond.has_more) == ([], False)
    assert (nothing.items, nothing.has_more) == ([], False)


async def test_redeploy_does_not_move_an_agent_in_the_listing(store: Store) -> None:
    org = await store.create_organization("acme")
    for agent_id in ("first", "second", "third"):
        await store.deploy_agent(org.id, spec(agent_id))

    await store.deploy_agent(org.id, spec("first", "redeployed"))
    page = await store.list_agents(org.id, CursorQuery(order="desc"))

    assert ids(page) == ["third", "second", "first"]
    assert [(a.name, a.version) for a in page.items] == [
        ("Agent third", 1),
        ("Agent second", 1),
        ("redeployed", 2),
    ]
