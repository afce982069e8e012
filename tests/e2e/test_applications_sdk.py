"""The Applications API (A1, A2, A3, G1, G2) through the official ``writer-sdk``.

Every client is strict (``_strict_response_validation=True``): a reply that does not match
the SDK's models fails the test. ``max_retries=0`` so an error is seen exactly once.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import writerai
from writerai.types import ApplicationGenerateContentChunk
from writerai.types.shared import ErrorObject

from tests.e2e.conftest import (
    ALT_TEXT_ID,
    BRIEF_ID,
    EXAMPLES,
    PRODUCT_ID,
    SHORT_PRODUCT_ID,
    SOCIAL_ID,
    SUMMARY_ID,
    CopydeskServer,
    ListeningProcess,
    clean_env,
    write_agent,
)

PRODUCT_INPUTS: list[Any] = [
    {"id": "product_names", "value": ["Ceramic travel mug", "Bamboo lid"]},
    {"id": "tone", "value": ["Playful"]},
]
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
#: What the deterministic provider writes: "[<8 hex>] <the prompt's first words>".
DETERMINISTIC = re.compile(r"^\[[0-9a-f]{8}\] ")


def check_envelope(exc: writerai.APIStatusError, status: int, tpe: str) -> list[dict[str, Any]]:
    """Writer's error envelope, exactly; 4xx answers say they are not worth retrying."""
    assert exc.status_code == status, exc
    body = exc.body
    assert isinstance(body, dict), body
    assert set(body) == {"tpe", "errors", "extras"}
    ErrorObject.model_validate(body)  # the SDK's own shared error type
    assert body["tpe"] == tpe
    assert isinstance(body["extras"], dict)
    assert body["errors"], "an error envelope needs at least one item"
    for item in body["errors"]:
        assert set(item) == {"description", "key", "extras"}
        assert item["description"].strip()
        assert item["key"].startswith("fail.")
        assert isinstance(item["extras"], dict)
    assert exc.response.headers["content-type"].startswith("application/json")
    if 400 <= status < 500 and status != 429:
        assert exc.response.headers["x-should-retry"] == "false"
    errors: list[dict[str, Any]] = body["errors"]
    return errors


def http_envelope(response: httpx.Response, status: int, tpe: str) -> list[dict[str, Any]]:
    """The same checks on a raw response."""
    error = writerai.APIStatusError("raw", response=response, body=response.json())
    return check_envelope(error, status, tpe)


# --- A1: listing and paging ------------------------------------------------------------

PAGED_AGENTS = 103  # more than 100, and not a multiple of the page size
PAGE = 7


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CopydeskServer, list[str]]]:
    """A server with only 103 agents, deployed by ``copydesk agents deploy`` while it runs.

    Returns the server and the agent ids in deploy (creation) order.
    """
    running = CopydeskServer(tmp_path_factory.mktemp("paged") / "data").start()
    try:
        folder = tmp_path_factory.mktemp("many-agents")
        ids = [f"a0000000-0000-4000-8000-{n:012d}" for n in range(PAGED_AGENTS)]
        # Ids are not in creation order by value: the list must follow creation, not ids.
        ids = ids[::2] + ids[1::2]
        for index, agent_id in enumerate(ids):
            write_agent(
                folder,
                f"agent-{index:03d}.yaml",  # deploy goes through a folder's files in name order
                f"id: {agent_id}\nname: Agent {index:03d}\nprompt: Say hello {index}\n",
            )
        deployed = running.cli("agents", "deploy", folder).stdout
        assert deployed.count("deployed ") == PAGED_AGENTS, deployed
        yield running, ids
    finally:
        running.stop()


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_auto_paging_visits_every_agent_once_in_order(
    paged: tuple[CopydeskServer, list[str]], order: str
) -> None:
    server, ids = paged
    expected = ids if order == "asc" else ids[::-1]
    with server.client() as client:
        first = client.applications.list(order=order, limit=PAGE)  # type: ignore[arg-type]
        pages = list(first.iter_pages())
        seen = [app.id for app in client.applications.list(order=order, limit=PAGE)]  # type: ignore[arg-type]
    assert seen == expected
    assert len(pages) == -(-PAGED_AGENTS // PAGE)  # 15 pages: 14 full, one of 5
    assert [len(p.data) for p in pages] == [PAGE] * 14 + [PAGED_AGENTS % PAGE]
    assert [p.has_more for p in pages] == [True] * 14 + [False]
    for page in pages:
        assert page.first_id == page.data[0].id
        assert page.last_id == page.data[-1].id
        assert all(app.type == "generation" and app.status == "deployed" for app in page.data)


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_auto_paging_async(paged: tuple[CopydeskServer, list[str]], order: str) -> None:
    server, ids = paged
    expected = ids if order == "asc" else ids[::-1]
    async with server.async_client() as client:
        seen = [
            app.id
            async for app in client.applications.list(
                order=order,  # type: ignore[arg-type]
                limit=PAGE,
                type="generation",
            )
        ]
    assert seen == expected


def test_default_order_is_newest_first_with_pages_of_50(
    paged: tuple[CopydeskServer, list[str]],
) -> None:
    server, ids = paged
    with server.client() as client:
        page = client.applications.list()
    assert [app.id for app in page.data] == ids[::-1][:50]
    assert page.has_more is True


def test_manual_cursors(paged: tuple[CopydeskServer, list[str]]) -> None:
    server, ids = paged
    newest_first = ids[::-1]
    with server.client() as client:

        def listed(**params: Any) -> list[str]:
            page = client.applications.list(limit=PAGE, **params)
            data = [app.id for app in page.data]
            assert page.first_id == (data[0] if data else None)
            assert page.last_id == (data[-1] if data else None)
            return data

        first = client.applications.list(order="asc", limit=PAGE)
        assert first.first_id == ids[0]
        assert first.last_id == ids[6]
        second = listed(order="asc", after=first.last_id)
        assert second == ids[7:14]
        assert listed(order="asc", before=second[0]) == ids[0:7]
        assert listed(order="asc", before=ids[50]) == ids[43:50]
        assert listed(order="asc", after=ids[-3]) == ids[-2:]
        assert listed(order="asc", before=ids[2]) == ids[0:2]
        # desc: "after" walks toward older agents, "before" toward newer ones.
        assert listed(order="desc", after=newest_first[6]) == newest_first[7:14]
        assert listed(order="desc", before=newest_first[20]) == newest_first[13:20]
        # both cursors: the items strictly between them
        assert listed(order="asc", after=ids[10], before=ids[15]) == ids[11:15]
        # an unknown cursor is an empty page, not an error
        empty = client.applications.list(order="asc", after=UNKNOWN_ID)
        assert empty.data == []
        assert empty.has_more is False
        assert empty.first_id is None
        assert empty.last_id is None


def test_auto_paging_backwards_from_a_before_cursor(
    paged: tuple[CopydeskServer, list[str]],
) -> None:
    """With ``before``, the SDK asks for the page before each page's first item."""
    server, ids = paged
    with server.client() as client:
        seen = [app.id for app in client.applications.list(order="asc", limit=PAGE, before=ids[50])]
    # pages ids[43:50], ids[36:43], ... ids[1:8], ids[0:1], each in ascending order
    expected: list[str] = []
    end = 50
    while end > 0:
        expected += ids[max(0, end - PAGE) : end]
        end -= PAGE
    assert seen == expected
    assert sorted(seen) == sorted(ids[:50])


def test_limit_bounds(paged: tuple[CopydeskServer, list[str]]) -> None:
    server, _ = paged
    with server.client() as client:
        assert client.applications.list(limit=0).data == []  # the SDK's own tests send 0
        assert len(client.applications.list(limit=100).data) == 100
        with pytest.raises(writerai.BadRequestError) as caught:
            client.applications.list(limit=101)
    (item,) = check_envelope(caught.value, 400, "BadRequest")
    assert "limit" in item["description"]


# --- A2: retrieve ------------------------------------------------------------------------


def test_retrieve_has_exact_fields(server: CopydeskServer, client: writerai.Writer) -> None:
    app = client.applications.retrieve(PRODUCT_ID)
    assert app.id == PRODUCT_ID
    assert app.name == "Product description writer"
    assert app.type == "generation"
    assert app.status == "deployed"
    assert app.created_at.tzinfo is not None
    assert app.updated_at >= app.created_at
    assert app.last_deployed_at is not None
    assert [(i.name, i.input_type, i.required) for i in app.inputs] == [
        ("product_names", "text", True),
        ("tone", "dropdown", True),
    ]
    names, tone = app.inputs
    assert names.description == "One or more product names (with key features, if you have them)."
    assert names.options is not None
    assert names.options.model_dump() == {"min_fields": 1, "max_fields": 10}
    assert tone.options is not None
    assert tone.options.model_dump() == {
        "list": ["Playful", "Friendly", "Professional", "Luxurious", "Technical"]
    }
    # On the wire: Writer's fields (plus two documented Copydesk extensions), nothing else.
    raw = server.http("GET", f"/v1/applications/{PRODUCT_ID}").json()
    assert set(raw) == {
        "id", "name", "type", "status", "inputs", "created_at", "updated_at",
        "last_deployed_at", "version", "description",
    }  # fmt: skip
    assert raw["created_at"].endswith("Z")
    assert raw["version"] == 1


def test_options_are_filled_for_every_input_type(server: CopydeskServer) -> None:
    """Strict SDK clients reject partial option objects: every field must be there."""
    brief = server.http("GET", f"/v1/applications/{BRIEF_ID}").json()
    options = {i["name"]: i["options"] for i in brief["inputs"]}
    assert options["products"] == {"min_fields": 2, "max_fields": 3}
    assert options["audience"] == {"list": ["Engineers", "Buyers"]}
    assert set(options["spec_sheet"]) == {
        "max_files", "file_types", "max_word_count", "max_file_size_mb", "upload_types",
    }  # fmt: skip
    alt = server.http("GET", f"/v1/applications/{ALT_TEXT_ID}").json()
    for item in alt["inputs"]:  # text inputs written without options
        assert set(item["options"]) == {"min_fields", "max_fields"}


async def test_retrieve_and_list_async(server: CopydeskServer) -> None:
    async with server.async_client() as client:
        app = await client.applications.retrieve(BRIEF_ID)
        listed = [a.id async for a in client.applications.list(order="asc")]
    assert app.name == "Comparison brief"
    assert [i.input_type for i in app.inputs] == ["text", "dropdown", "file"]
    assert app.inputs[2].required is False
    assert sorted(listed) == sorted([PRODUCT_ID, SOCIAL_ID, ALT_TEXT_ID, SUMMARY_ID, BRIEF_ID])


# --- A3: generate --------------------------------------------------------------------------


def test_generate_json(server: CopydeskServer, client: writerai.Writer) -> None:
    before = server.generation_count()
    answer = client.applications.generate_content(PRODUCT_ID, inputs=PRODUCT_INPUTS)
    assert answer.title == "Product description"
    assert answer.suggestion.strip()
    # The deterministic provider echoes the rendered prompt: the inputs reached it.
    assert DETERMINISTIC.match(answer.suggestion)
    assert "playful tone" in answer.suggestion
    assert "Ceramic travel mug" in answer.suggestion
    assert "Bamboo lid" in answer.suggestion
    assert server.generation_count() == before + 1


def test_generate_stream(server: CopydeskServer, client: writerai.Writer) -> None:
    whole = client.applications.generate_content(PRODUCT_ID, inputs=PRODUCT_INPUTS)
    before = server.generation_count()
    stream = client.applications.generate_content(PRODUCT_ID, inputs=PRODUCT_INPUTS, stream=True)
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    chunks = list(stream)  # each chunk was validated strictly by the SDK
    assert len(chunks) > 3
    assert all(isinstance(c, ApplicationGenerateContentChunk) for c in chunks)
    assert {c.delta.title for c in chunks} == {"Product description"}
    assert "".join(c.delta.content or "" for c in chunks) == whole.suggestion
    assert server.generation_count() == before + 1  # a stream records usage when it ends


async def test_generate_async_json_and_stream(server: CopydeskServer) -> None:
    inputs: list[Any] = [
        {"id": "headline", "value": ["Copydesk 1.0 is out"]},
        {"id": "key_points", "value": ["self-hosted", "Writer-compatible"]},
        {"id": "channel", "value": ["LinkedIn"]},
    ]
    async with server.async_client() as client:
        answer = await client.applications.generate_content(SOCIAL_ID, inputs=inputs)
        stream = await client.applications.generate_content(SOCIAL_ID, inputs=inputs, stream=True)
        pieces = [chunk.delta.content or "" async for chunk in stream]
    assert answer.title == "Social post"
    assert "LinkedIn post announcing: Copydesk 1.0 is out" in answer.suggestion
    assert len(pieces) > 3
    assert "".join(pieces) == answer.suggestion


def test_optional_inputs_may_be_left_out(client: writerai.Writer) -> None:
    answer = client.applications.generate_content(
        ALT_TEXT_ID, inputs=[{"id": "image_description", "value": ["a red bicycle"]}]
    )
    assert answer.title == "Alt text"
    assert "a red bicycle" in answer.suggestion


# --- G1, G2: graphs --------------------------------------------------------------------------


def test_graphs_are_replaced_and_survive_a_restart(launch: Any) -> None:
    server: CopydeskServer = launch(agents=[EXAMPLES])
    first = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
    second = ["33333333-3333-4333-8333-333333333333"]
    with server.client() as client:
        assert client.applications.graphs.list(PRODUCT_ID).graph_ids == []
        assert client.applications.graphs.update(PRODUCT_ID, graph_ids=first).graph_ids == first
        assert client.applications.graphs.list(PRODUCT_ID).graph_ids == first
        updated = client.applications.graphs.update(PRODUCT_ID, graph_ids=[*second, *second])
        assert updated.graph_ids == second  # replaced, not appended; duplicates dropped
        assert client.applications.graphs.list(SOCIAL_ID).graph_ids == []  # per application
    server.restart()  # same data dir, new process and port
    with server.client() as client:
        assert client.applications.graphs.list(PRODUCT_ID).graph_ids == second
        assert client.applications.graphs.update(PRODUCT_ID, graph_ids=[]).graph_ids == []
        assert client.applications.graphs.list(PRODUCT_ID).graph_ids == []


async def test_graphs_async(launch: Any) -> None:
    server: CopydeskServer = launch(agents=[EXAMPLES])
    graph = "44444444-4444-4444-8444-444444444444"
    async with server.async_client() as client:
        assert (
            await client.applications.graphs.update(SOCIAL_ID, graph_ids=[graph])
        ).graph_ids == [graph]
        assert (await client.applications.graphs.list(SOCIAL_ID)).graph_ids == [graph]


# --- errors: authentication --------------------------------------------------------------


def test_missing_key_is_401(server: CopydeskServer) -> None:
    no_header = {"Authorization": writerai.Omit()}
    with server.client(default_headers=no_header) as client:
        with pytest.raises(writerai.AuthenticationError) as caught:
            client.applications.list()
        assert "authorization" not in caught.value.request.headers
    (item,) = check_envelope(caught.value, 401, "Unauthorized")
    assert item["key"] == "fail.unauthorized.badToken"
    assert "Authorization" in item["description"]


@pytest.mark.parametrize(
    "key",
    [
        "cd_000000000000_" + "x" * 43,  # our shape, unknown prefix
        "My API Key",  # the SDK test suite's key, not configured here
        "cd_" + "x" * 60,  # no prefix to look up
    ],
    ids=["unknown", "sdk-test-key", "malformed"],
)
def test_wrong_key_is_401(server: CopydeskServer, key: str) -> None:
    with (
        server.client(api_key=key) as client,
        pytest.raises(writerai.AuthenticationError) as caught,
    ):
        client.applications.retrieve(PRODUCT_ID)
    (item,) = check_envelope(caught.value, 401, "Unauthorized")
    assert item["key"] == "fail.unauthorized.badToken"


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic dXNlcjpwYXNz", "cd_000000000000_nope"],
    ids=["no-token", "basic", "no-scheme"],
)
def test_malformed_authorization_header_is_401(server: CopydeskServer, header: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as raw:
        response = raw.get("/v1/applications", headers={"Authorization": header})
    http_envelope(response, 401, "Unauthorized")


def test_a_tampered_key_is_401(server: CopydeskServer) -> None:
    """The right prefix with a wrong secret: the whole key is checked, not just its prefix."""
    tampered = server.key[:-4] + ("AAAA" if not server.key.endswith("AAAA") else "BBBB")
    with server.client(api_key=tampered) as client, pytest.raises(writerai.AuthenticationError):
        client.applications.list()


async def test_wrong_key_is_401_async(server: CopydeskServer) -> None:
    async with server.async_client(api_key="cd_123456789abc_nope") as client:
        with pytest.raises(writerai.AuthenticationError) as caught:
            await client.applications.generate_content(PRODUCT_ID, inputs=PRODUCT_INPUTS)
    check_envelope(caught.value, 401, "Unauthorized")


def test_revoked_key_is_401(server: CopydeskServer) -> None:
    key = server.new_key("default")
    prefix = key.split("_")[1]
    with server.client(api_key=key) as client:
        assert client.applications.retrieve(PRODUCT_ID).id == PRODUCT_ID
        revoked = server.cli("keys", "revoke", prefix).stdout
        assert prefix in revoked
        with pytest.raises(writerai.AuthenticationError) as caught:
            client.applications.retrieve(PRODUCT_ID)  # at once, on the running server
    check_envelope(caught.value, 401, "Unauthorized")
    with server.client() as client:  # the other keys keep working
        assert client.applications.retrieve(PRODUCT_ID).id == PRODUCT_ID


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/applications", None),
        ("GET", f"/v1/applications/{PRODUCT_ID}", None),
        ("POST", f"/v1/applications/{PRODUCT_ID}", {"inputs": PRODUCT_INPUTS}),
        ("POST", f"/v1/applications/{PRODUCT_ID}", {"inputs": PRODUCT_INPUTS, "stream": True}),
        ("GET", f"/v1/applications/{PRODUCT_ID}/graphs", None),
        ("PUT", f"/v1/applications/{PRODUCT_ID}/graphs", {"graph_ids": []}),
        ("GET", f"/v1/applications/{UNKNOWN_ID}", None),  # 401 first: ids are not probed
    ],
)
def test_every_route_needs_a_key(server: CopydeskServer, method: str, path: str, body: Any) -> None:
    response = server.http(method, path, api_key="cd_badbadbadbad_nope", json=body)
    http_envelope(response, 401, "Unauthorized")


# --- errors: not found -----------------------------------------------------------------------


def test_unknown_application_is_404_everywhere(client: writerai.Writer) -> None:
    calls = [
        lambda: client.applications.retrieve(UNKNOWN_ID),
        lambda: client.applications.generate_content(UNKNOWN_ID, inputs=PRODUCT_INPUTS),
        lambda: client.applications.generate_content(
            UNKNOWN_ID, inputs=PRODUCT_INPUTS, stream=True
        ),
        lambda: client.applications.graphs.list(UNKNOWN_ID),
        lambda: client.applications.graphs.update(UNKNOWN_ID, graph_ids=[]),
    ]
    for call in calls:
        with pytest.raises(writerai.NotFoundError) as caught:
            call()
        (item,) = check_envelope(caught.value, 404, "NotFound")
        assert item["key"] == "fail.notFound.resource"
        assert item["extras"] == {"resource": "application"}
        assert UNKNOWN_ID in item["description"]


def test_another_organisations_application_is_404(server: CopydeskServer, tmp_path: Path) -> None:
    other_key = server.new_key("other")
    other_id = "0a7e2c15-0000-4d3f-8e1a-0123456789ab"
    agent = write_agent(
        tmp_path, "private.yaml", f"id: {other_id}\nname: Private agent\nprompt: Say hi\n"
    )
    server.cli("agents", "deploy", agent, "--org", "other")
    with server.client(api_key=other_key) as other:
        assert other.applications.retrieve(other_id).name == "Private agent"
        assert [a.id for a in other.applications.list()] == [other_id]  # only its own
        with pytest.raises(writerai.NotFoundError):
            other.applications.retrieve(PRODUCT_ID)  # and not the default org's
    with server.client() as client:
        for call in (
            lambda: client.applications.retrieve(other_id),
            lambda: client.applications.generate_content(other_id, inputs=[]),
            lambda: client.applications.graphs.update(other_id, graph_ids=["x"]),
        ):
            with pytest.raises(writerai.NotFoundError) as caught:
                call()
            (item,) = check_envelope(caught.value, 404, "NotFound")
            # indistinguishable from an id that does not exist
            assert item["extras"] == {"resource": "application"}
        assert other_id not in [a.id for a in client.applications.list(limit=100)]
    with server.client(api_key=other_key) as other:
        assert other.applications.graphs.list(other_id).graph_ids == []  # untouched


# --- errors: inputs ---------------------------------------------------------------------------

GOOD_BRIEF: dict[str, list[str]] = {
    "products": ["Mug A", "Mug B"],
    "audience": ["Buyers"],
}


def brief_inputs(**changes: list[str] | None) -> list[Any]:
    values: dict[str, list[str] | None] = {**GOOD_BRIEF, **changes}
    return [{"id": name, "value": value} for name, value in values.items() if value is not None]


INPUT_RULES = [
    pytest.param(brief_inputs(tone=["Warm"]), "tone", "unknown_input", id="unknown-input"),
    pytest.param(brief_inputs(audience=None), "audience", "required", id="missing-required"),
    pytest.param(brief_inputs(audience=[]), "audience", "required", id="required-no-values"),
    pytest.param(brief_inputs(products=["Mug A"]), "products", "min_fields", id="min-fields"),
    pytest.param(
        brief_inputs(products=["A", "B", "C", "D"]), "products", "max_fields", id="max-fields"
    ),
    pytest.param(
        brief_inputs(audience=["Engineers", "Buyers"]), "audience", "max_fields", id="dropdown-one"
    ),
    pytest.param(brief_inputs(audience=["Kids"]), "audience", "dropdown_list", id="dropdown-list"),
    pytest.param(brief_inputs(products=["Mug A", "  "]), "products", "empty_value", id="empty"),
    pytest.param(
        brief_inputs(spec_sheet=["https://example.com/sheet.pdf"]),
        "spec_sheet",
        "upload_types",  # a URL, where the input takes only uploaded file ids
        id="file-url-not-allowed",
    ),
    pytest.param(
        [*brief_inputs(), {"id": "products", "value": ["C", "D"]}],
        "products",
        "duplicate_input",
        id="duplicate",
    ),
]


@pytest.mark.parametrize(("inputs", "name", "rule"), INPUT_RULES)
def test_each_input_rule_is_a_400(
    client: writerai.Writer, inputs: list[Any], name: str, rule: str
) -> None:
    with pytest.raises(writerai.BadRequestError) as caught:
        client.applications.generate_content(BRIEF_ID, inputs=inputs)
    (item,) = check_envelope(caught.value, 400, "BadRequest")
    assert item["key"] == f"fail.badRequest.invalidInputs.{rule}"
    assert item["extras"]["input"] == name
    assert item["extras"]["rule"] == rule
    assert f"'{name}'" in item["description"]


def test_the_good_inputs_of_those_cases_pass(client: writerai.Writer) -> None:
    """The baseline the rule cases change one thing of."""
    answer = client.applications.generate_content(BRIEF_ID, inputs=brief_inputs())
    assert answer.title == "Comparison"
    assert "Compare for Buyers" in answer.suggestion


def test_every_problem_is_reported_at_once(server: CopydeskServer, client: writerai.Writer) -> None:
    before = server.generation_count()
    inputs: list[Any] = [
        {"id": "products", "value": ["only one"]},
        {"id": "audience", "value": ["Kids"]},
        {"id": "spec_sheet", "value": ["file-123"]},
        {"id": "colour", "value": ["red"]},
    ]
    for stream in (False, True):
        with pytest.raises(writerai.BadRequestError) as caught:
            client.applications.generate_content(BRIEF_ID, inputs=inputs, stream=stream)  # type: ignore[call-overload]
        items = check_envelope(caught.value, 400, "BadRequest")
        assert sorted((i["extras"]["input"], i["extras"]["rule"]) for i in items) == [
            ("audience", "dropdown_list"),
            ("colour", "unknown_input"),
            ("products", "min_fields"),
            ("spec_sheet", "file_not_found"),
        ]
    assert server.generation_count() == before  # nothing was generated nor stored


async def test_input_errors_async(server: CopydeskServer) -> None:
    async with server.async_client() as client:
        with pytest.raises(writerai.BadRequestError) as caught:
            await client.applications.generate_content(
                PRODUCT_ID, inputs=[{"id": "tone", "value": ["Grumpy"]}], stream=True
            )
    items = check_envelope(caught.value, 400, "BadRequest")
    assert {(i["extras"]["input"], i["extras"]["rule"]) for i in items} == {
        ("product_names", "required"),
        ("tone", "dropdown_list"),
    }


# --- errors: malformed requests -------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("order=sideways", "order"), ("limit=abc", "limit"), ("limit=1.5", "limit")],
)
def test_bad_query_parameter_is_422(server: CopydeskServer, query: str, parameter: str) -> None:
    response = server.http("GET", f"/v1/applications?{query}")
    (item,) = http_envelope(response, 422, "UnprocessableEntity")
    assert item["extras"]["loc"] == ["query", parameter]
    assert parameter in item["description"]


def test_type_filter_generation_lists_agents_and_other_types_list_none(
    server: CopydeskServer,
) -> None:
    generation = server.http("GET", "/v1/applications?type=generation&limit=3")
    research = server.http("GET", "/v1/applications?type=research")
    assert generation.status_code == 200
    assert len(generation.json()["data"]) == 3
    assert research.status_code == 200
    assert research.json() == {"data": [], "has_more": False, "first_id": None, "last_id": None}


def test_bad_query_parameter_through_the_sdk(client: writerai.Writer) -> None:
    with pytest.raises(writerai.UnprocessableEntityError) as caught:
        client.applications.list(order="sideways")  # type: ignore[arg-type]
    check_envelope(caught.value, 422, "UnprocessableEntity")


def test_wrong_method_is_405(server: CopydeskServer) -> None:
    response = server.http("DELETE", "/v1/applications")
    http_envelope(response, 405, "MethodNotAllowed")
    assert "GET" in response.headers["allow"]
    response = server.http("PATCH", f"/v1/applications/{PRODUCT_ID}")
    http_envelope(response, 405, "MethodNotAllowed")


def test_unknown_route_is_404(server: CopydeskServer, client: writerai.Writer) -> None:
    with pytest.raises(writerai.NotFoundError) as caught:
        client.get("/v1/no-such-thing", cast_to=object)
    (item,) = check_envelope(caught.value, 404, "NotFound")
    assert item["key"] == "fail.notFound.route"
    response = server.http("GET", f"/v1/applications/{PRODUCT_ID}/jobs/x/y")
    http_envelope(response, 404, "NotFound")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"inputs": "product_names"}',
        b'{"stream": false}',
        b'{"inputs": [{"id": "tone"}]}',
        b'{"inputs": [{"id": "tone", "value": [1]}]}',
        b'{"inputs": [{"id": "tone", "value": ["Playful"], "extra": 1}]}',
    ],
    ids=[
        "malformed",
        "empty",
        "array",
        "inputs-not-array",
        "no-inputs",
        "no-value",
        "value-not-strings",
        "unknown-field",
    ],
)
def test_malformed_body_is_400(server: CopydeskServer, body: bytes) -> None:
    before = server.generation_count()
    response = server.http(
        "POST",
        f"/v1/applications/{PRODUCT_ID}",
        content=body,
        headers={"content-type": "application/json"},
    )
    items = http_envelope(response, 400, "BadRequest")
    assert all(i["key"] == "fail.badRequest.invalidParameters" for i in items)
    assert all(i["extras"]["loc"][0] == "body" for i in items)
    assert server.generation_count() == before


def test_graph_update_needs_graph_ids(server: CopydeskServer) -> None:
    response = server.http("PUT", f"/v1/applications/{PRODUCT_ID}/graphs", json={"ids": []})
    (item,) = http_envelope(response, 400, "BadRequest")
    assert item["extras"]["loc"] == ["body", "graph_ids"]


# --- streaming failures, through real OpenAI-compatible upstreams ---------------------------


class MidStreamFailure:
    """A chat-completions server that streams two SSE chunks, then drops the connection.

    The chunked body is never finished, so the client sees a broken stream, not its end.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    def __enter__(self) -> MidStreamFailure:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            received = conn.recv(65536)
            if not received:
                return
            data += received
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += conn.recv(65536)
        self.requests.append(json.loads(body))
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for word in ("Hel", "lo"):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        # no "0\r\n\r\n": the connection ends in the middle of the body


BROKEN_AGENT = """\
id: b0000000-0000-4000-8000-00000000b0c1
name: Broken upstream
inputs:
  - name: topic
    input_type: text
prompt: Write about {{ topic }}
model:
  provider: broken
"""
DOWN_AGENT = (
    BROKEN_AGENT.replace("b0c1", "d0e1").replace("Broken", "Down").replace("broken", "down")
)
TOPIC: list[Any] = [{"id": "topic", "value": ["tea"]}]


@pytest.fixture(scope="module")
def upstream_failures(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CopydeskServer, MidStreamFailure]]:
    """A server whose agents use a provider that breaks mid-stream and one that is down."""
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more: connections are refused
    agents = tmp_path_factory.mktemp("upstream-agents")
    write_agent(agents, "broken.yaml", BROKEN_AGENT)
    write_agent(agents, "down.yaml", DOWN_AGENT)
    with MidStreamFailure() as upstream:
        server = CopydeskServer(
            tmp_path_factory.mktemp("upstream") / "data",
            agents=[agents],
            env={
                "COPYDESK_PROVIDERS__BROKEN__KIND": "openai",
                "COPYDESK_PROVIDERS__BROKEN__BASE_URL": upstream.base_url,
                "COPYDESK_PROVIDERS__BROKEN__MODEL": "fake-model",
                "COPYDESK_PROVIDERS__DOWN__KIND": "openai",
                "COPYDESK_PROVIDERS__DOWN__BASE_URL": f"http://127.0.0.1:{closed_port}/v1",
            },
        )
        server.start()
        try:
            yield server, upstream
        finally:
            server.stop()


async def drain(stream: writerai.AsyncStream[Any], into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.delta.content or "")


def check_stream_error(exc: writerai.APIStatusError) -> None:
    assert exc.status_code == 200  # the stream had started: the status was already sent
    body = exc.body
    assert isinstance(body, dict)
    ErrorObject.model_validate(body)
    assert body["tpe"] == "ServiceUnavailable"
    (item,) = body["errors"]
    assert item["key"] == "fail.serviceUnavailable.providerUnavailable"
    assert "broken" in item["description"]


def test_error_after_the_stream_started_raises_in_the_sdk(
    upstream_failures: tuple[CopydeskServer, MidStreamFailure],
) -> None:
    server, upstream = upstream_failures
    before = server.generation_count()
    received: list[str] = []
    with server.client() as client:
        stream = client.applications.generate_content(
            "b0000000-0000-4000-8000-00000000b0c1", inputs=TOPIC, stream=True
        )
        with pytest.raises(writerai.APIStatusError) as caught:
            received.extend(chunk.delta.content or "" for chunk in stream)
    assert received == ["Hel", "lo"]  # what came before the failure was delivered
    assert type(caught.value) is writerai.APIStatusError
    check_stream_error(caught.value)
    sent = upstream.requests[-1]
    assert sent["stream"] is True
    assert sent["model"] == "fake-model"
    assert sent["messages"][-1]["content"] == "Write about tea"
    assert server.generation_count() == before  # a failed stream records nothing


async def test_error_after_the_stream_started_async(
    upstream_failures: tuple[CopydeskServer, MidStreamFailure],
) -> None:
    server, _ = upstream_failures
    received: list[str] = []
    async with server.async_client() as client:
        stream = await client.applications.generate_content(
            "b0000000-0000-4000-8000-00000000b0c1", inputs=TOPIC, stream=True
        )
        with pytest.raises(writerai.APIStatusError) as caught:
            await drain(stream, received)
    assert received == ["Hel", "lo"]
    check_stream_error(caught.value)


def test_broken_upstream_without_streaming_is_a_retryable_503(
    upstream_failures: tuple[CopydeskServer, MidStreamFailure],
) -> None:
    server, _ = upstream_failures
    with server.client() as client, pytest.raises(writerai.InternalServerError) as caught:
        client.applications.generate_content("b0000000-0000-4000-8000-00000000b0c1", inputs=TOPIC)
    (item,) = check_envelope(caught.value, 503, "ServiceUnavailable")
    assert item["key"] == "fail.serviceUnavailable.providerUnavailable"
    headers = caught.value.response.headers
    assert headers.get("x-should-retry") != "false"  # the SDK may retry this one
    assert float(headers["retry-after"]) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_provider_down_before_the_stream_is_a_real_503(
    upstream_failures: tuple[CopydeskServer, MidStreamFailure], stream: bool
) -> None:
    """Nothing was sent yet, so a stream request gets a real HTTP error, not an event."""
    server, _ = upstream_failures
    with server.client() as client, pytest.raises(writerai.InternalServerError) as caught:
        client.applications.generate_content(
            "b0000000-0000-4000-8000-00000000d0e1",
            inputs=TOPIC,
            stream=stream,  # type: ignore[arg-type]
        )
    (item,) = check_envelope(caught.value, 503, "ServiceUnavailable")
    assert "down" in item["description"]


@pytest.fixture
def fake_llm() -> Iterator[str]:
    """``python -m copydesk.testing.fake_llm`` as a subprocess; yields its root URL."""
    process = ListeningProcess(
        [sys.executable, "-m", "copydesk.testing.fake_llm", "--port", "0", "--retry-after", "2"],
        clean_env(),
        "FAKE_LLM_LISTENING",
    )
    url = process.start()
    try:
        yield url
    finally:
        process.stop()


def test_upstream_rate_limit_is_a_429_with_retry_after(
    launch: Any, tmp_path: Path, fake_llm: str
) -> None:
    agents = tmp_path / "agents"
    write_agent(agents, "fake.yaml", BROKEN_AGENT.replace("provider: broken", "provider: fake"))
    server = launch(
        agents=[agents],
        env={
            "COPYDESK_PROVIDERS__FAKE__KIND": "openai",
            "COPYDESK_PROVIDERS__FAKE__BASE_URL": f"{fake_llm}/v1",
        },
    )
    agent_id = "b0000000-0000-4000-8000-00000000b0c1"
    httpx.post(f"{fake_llm}/_control", json={"script": ["429", "ok"]}).raise_for_status()
    with server.client() as client:
        with pytest.raises(writerai.RateLimitError) as caught:
            client.applications.generate_content(agent_id, inputs=TOPIC)
        check_envelope(caught.value, 429, "TooManyRequests")
        assert caught.value.response.headers["retry-after"] == "2"
        assert caught.value.response.headers.get("x-should-retry") != "false"
        # the upstream recovered: the same call now goes through
        answer = client.applications.generate_content(agent_id, inputs=TOPIC)
        assert answer.suggestion.startswith("Echo:")
        assert "tea" in answer.suggestion


# --- OpenAPI and docs ---------------------------------------------------------------------


def test_openapi_and_docs(server: CopydeskServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as raw:
        schema = raw.get("/openapi.json")
        docs = raw.get("/docs")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"get"} <= set(paths["/v1/applications"])
    assert {"get", "post"} <= set(paths["/v1/applications/{application_id}"])
    assert {"get", "put"} <= set(paths["/v1/applications/{application_id}/graphs"])
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text


# --- the real embedded model ---------------------------------------------------------------


@pytest.mark.model
def test_real_model_generates_text(model_server: CopydeskServer) -> None:
    with model_server.client(timeout=240) as client:
        answer = client.applications.generate_content(
            PRODUCT_ID,
            inputs=[
                {"id": "product_names", "value": ["Ceramic travel mug"]},
                {"id": "tone", "value": ["Friendly"]},
            ],
        )
    assert answer.title == "Product description"
    assert answer.suggestion.strip()
    # A real model, not the deterministic fallback that echoes the prompt.
    assert not DETERMINISTIC.match(answer.suggestion)


@pytest.mark.model
async def test_real_model_streams_several_chunks(model_server: CopydeskServer) -> None:
    async with model_server.async_client(timeout=240) as client:
        stream = await client.applications.generate_content(
            SHORT_PRODUCT_ID,
            inputs=[
                {"id": "product_names", "value": ["Bamboo desk lamp"]},
                {"id": "tone", "value": ["Technical"]},
            ],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    pieces = [c.delta.content for c in chunks if c.delta.content]
    assert len(pieces) >= 3
    text = "".join(pieces)
    assert text.strip()
    assert not DETERMINISTIC.match(text)
    assert {c.delta.title for c in chunks} == {"Product description"}
