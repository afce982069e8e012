"""Async jobs (J1-J4) through the official ``writer-sdk``, on both deployments.

``embedded``: ``copydesk serve`` on SQLite with its in-process workers. ``scaleout``:
``copydesk serve --no-workers`` plus one ``copydesk worker`` on a fresh PostgreSQL database
(PgQueuer engine). Every client is strict (``_strict_response_validation=True``) and never
retries (``max_retries=0``), so every reply is seen once, exactly as the server sent it.

Jobs of the example product agent run on the deterministic provider; jobs of the
fake-backed agent call a real fake-LLM server whose ``script`` decides, request by
request, whether a call fails (``"400"``: rejected for good) or hangs (``"stall"``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import writerai
from writerai.types.applications import ApplicationGenerateAsyncResponse
from writerai.types.shared import ErrorObject

from tests.e2e.conftest import EXAMPLES, PRODUCT_ID
from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    KINDS,
    Deployment,
    FakeLLM,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    topic,
)

PRODUCT_INPUTS: list[Any] = [
    {"id": "product_names", "value": ["Ceramic travel mug", "Bamboo lid"]},
    {"id": "tone", "value": ["Playful"]},
]
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
#: What the deterministic provider writes: "[<8 hex>] <the prompt's first words>".
DETERMINISTIC = re.compile(r"^\[[0-9a-f]{8}\] ")
WAIT_S = 60.0


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def fake(fake_llm: Callable[..., FakeLLM]) -> FakeLLM:
    return fake_llm()


@pytest.fixture
def deployment(kind: str, deployments: Any, fake: FakeLLM) -> Deployment:
    env = {
        **fake.provider_env(MAX_CONCURRENCY=8, TIMEOUT_S=300),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployed: Deployment = deployments(kind, env=env, agents=[EXAMPLES])
    return deployed


def client_of(deployment: Deployment, api_key: str | None = None) -> writerai.Writer:
    return writerai.Writer(
        api_key=api_key or deployment.key,
        base_url=deployment.url,
        max_retries=0,
        _strict_response_validation=True,
    )


def async_client_of(deployment: Deployment) -> writerai.AsyncWriter:
    return writerai.AsyncWriter(
        api_key=deployment.key,
        base_url=deployment.url,
        max_retries=0,
        _strict_response_validation=True,
    )


def wait_for(
    client: writerai.Writer,
    job_id: str,
    statuses: tuple[str, ...] = ("completed", "failed"),
    timeout_s: float = WAIT_S,
) -> ApplicationGenerateAsyncResponse:
    """Poll J2 until the job's status is one of ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.applications.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job.status} after {timeout_s:g}s: {job}")
        time.sleep(0.1)


def extra(job: ApplicationGenerateAsyncResponse, name: str) -> Any:
    """A Copydesk extension field (the SDK keeps unknown keys as extras)."""
    assert job.model_extra is not None
    return job.model_extra[name]


def check_error(exc: writerai.APIStatusError, status: int, tpe: str) -> dict[str, Any]:
    assert exc.status_code == status, exc
    body = exc.body
    assert isinstance(body, dict), body
    ErrorObject.model_validate(body)
    assert body["tpe"] == tpe, body
    assert body["errors"], body
    if 400 <= status < 500:
        assert exc.response.headers["x-should-retry"] == "false"
    return body


def total(client: writerai.Writer, app_id: str, status: Any = None) -> int:
    page = client.applications.jobs.list(app_id, limit=1, **({"status": status} if status else {}))
    assert page.total_count is not None
    return page.total_count


# --- J1 + J2: create, poll to completion --------------------------------------------------


async def test_create_and_poll_to_completion(deployment: Deployment) -> None:
    with client_of(deployment) as client:
        before = datetime.now().astimezone()
        raw = client.applications.jobs.with_raw_response.create(PRODUCT_ID, inputs=PRODUCT_INPUTS)
        assert raw.status_code == 202
        created = raw.parse()
        assert set(created.model_dump()) == {"id", "status", "created_at"}
        assert created.status == "in_progress"
        assert abs((created.created_at - before).total_seconds()) < 30

        job = wait_for(client, created.id)
        assert job.status == "completed", job
        assert job.id == created.id
        assert job.application_id == PRODUCT_ID
        assert job.created_at == created.created_at
        assert job.data is not None
        assert job.data.title == "Product description"
        assert DETERMINISTIC.match(job.data.suggestion), job.data.suggestion
        assert "Ceramic travel mug" in job.data.suggestion
        assert job.error is None
        assert job.completed_at is not None
        assert job.updated_at is not None
        assert job.created_at <= job.completed_at <= job.updated_at
        assert extra(job, "copydesk_status") == "completed"
        assert extra(job, "attempts_made") == 1
        attempts = extra(job, "attempts")
        assert [a["outcome"] for a in attempts] == ["completed"]
        assert extra(job, "usage")["completion_tokens"] > 0

        # The same inputs through the synchronous call give the same text (same pipeline).
        sync = client.applications.generate_content(PRODUCT_ID, inputs=PRODUCT_INPUTS)
        assert sync.suggestion == job.data.suggestion

    # The async client: several jobs at once, each polled to completion.
    async with async_client_of(deployment) as aclient:
        names = ["Linen apron", "Oak board", "Steel kettle"]
        made = [
            await aclient.applications.jobs.create(
                PRODUCT_ID,
                inputs=[
                    {"id": "product_names", "value": [n]},
                    {"id": "tone", "value": ["Luxurious"]},
                ],
            )
            for n in names
        ]
        deadline = time.monotonic() + WAIT_S
        for name, job_made in zip(names, made, strict=True):
            while (got := await aclient.applications.jobs.retrieve(job_made.id)).status != (
                "completed"
            ):
                assert got.status == "in_progress", got
                assert time.monotonic() < deadline, got
                time.sleep(0.05)
            assert got.data is not None
            assert name in got.data.suggestion


# --- J3: every filter, offset paging, auto-paging ------------------------------------------------


async def test_list_filters_and_paging(deployment: Deployment, fake: FakeLLM) -> None:
    """25 jobs of one application: 3 failed, 2 in progress (hung at the provider), 20 done."""
    with client_of(deployment) as client:
        created: list[str] = []  # oldest first
        fake.control(stall_s=600, script=["400", "400", "400"])
        for n in range(3):
            created.append(client.applications.jobs.create(FAKE_AGENT_ID, inputs=topic(f"f{n}")).id)
            assert wait_for(client, created[-1]).status == "failed"
        fake.control(script=["stall", "stall"])
        for n in range(2):
            created.append(client.applications.jobs.create(FAKE_AGENT_ID, inputs=topic(f"s{n}")).id)
        deadline = time.monotonic() + WAIT_S
        while fake.stats(arrivals=False)["stalls"] < 2:
            assert time.monotonic() < deadline, "the two stalled calls never reached the fake"
            time.sleep(0.1)
        for n in range(20):
            created.append(client.applications.jobs.create(FAKE_AGENT_ID, inputs=topic(f"c{n}")).id)
        for job_id in created[5:]:
            assert wait_for(client, job_id).status == "completed"
        failed, hung, done = created[:3], created[3:5], created[5:]
        newest_first = created[::-1]

        # Auto-paging, limit 7: four pages, every id once, newest first.
        first = client.applications.jobs.list(FAKE_AGENT_ID, limit=7)
        assert first.total_count == 25
        assert first.pagination is not None
        assert (first.pagination.offset, first.pagination.limit) == (0, 7)
        assert len(first.result) == 7
        pages = list(first.iter_pages())
        assert [len(p.result) for p in pages] == [7, 7, 7, 4]
        assert all(p.total_count == 25 for p in pages)
        listed = [job.id for job in client.applications.jobs.list(FAKE_AGENT_ID, limit=7)]
        assert listed == newest_first

        # Status filters: the totals and the ids, newest first.
        for status, expected in (("failed", failed), ("in_progress", hung), ("completed", done)):
            page = client.applications.jobs.list(FAKE_AGENT_ID, status=status, limit=7)
            assert page.total_count == len(expected), (status, page.total_count)
            ids = [
                j.id for j in client.applications.jobs.list(FAKE_AGENT_ID, status=status, limit=7)
            ]
            assert ids == expected[::-1], status
            for job in page.result:
                assert job.status == status
                if status == "completed":
                    assert job.data is not None
                    assert job.data.suggestion.startswith("Echo: Write one line about c")
                    assert job.completed_at is not None
                else:
                    assert job.data is None
                if status == "failed":
                    assert job.error
                    assert "400" in job.error
                    assert job.completed_at is not None
                if status == "in_progress":
                    assert job.error is None
                    assert job.completed_at is None

        # Explicit offset and limit: exactly that slice of the newest-first order.
        for offset, limit in ((0, 25), (5, 3), (20, 10), (24, 1), (25, 5), (100, 5)):
            page = client.applications.jobs.list(FAKE_AGENT_ID, offset=offset, limit=limit)
            assert [j.id for j in page.result] == newest_first[offset : offset + limit]
            assert page.total_count == 25
            assert page.pagination is not None
            assert (page.pagination.offset, page.pagination.limit) == (offset, limit)
        page = client.applications.jobs.list(FAKE_AGENT_ID, status="completed", offset=18, limit=7)
        assert [j.id for j in page.result] == done[::-1][18:]
        assert page.total_count == 20
        # Auto-paging from an offset keeps the filter and walks on from there.
        tail = client.applications.jobs.list(FAKE_AGENT_ID, status="completed", offset=5, limit=4)
        assert [j.id for j in tail] == done[::-1][5:]

    async with async_client_of(deployment) as aclient:
        ids = [j.id async for j in aclient.applications.jobs.list(FAKE_AGENT_ID, limit=7)]
        assert ids == newest_first
        page = await aclient.applications.jobs.list(FAKE_AGENT_ID, status="in_progress")
        assert [j.id for j in page.result] == hung[::-1]


# --- J4: retry a failed job ---------------------------------------------------------------------


async def test_retry_a_failed_job(deployment: Deployment, fake: FakeLLM) -> None:
    with client_of(deployment) as client:
        fake.control(script=["400"])
        job_id = client.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("retry me")).id
        failed = wait_for(client, job_id)
        assert failed.status == "failed"
        assert failed.error
        assert "rejected" in failed.error
        assert "400" in failed.error
        assert failed.data is None
        assert extra(failed, "attempts_made") == 1  # a 400 is not worth a second attempt
        assert fake.stats(arrivals=False)["requests_total"] == 1
        assert total(client, FAKE_AGENT_ID, "failed") == 1

        # The script is used up: the provider answers now.
        assert fake.control()["script"] == []
        raw = client.applications.jobs.with_raw_response.retry(job_id)
        assert raw.status_code == 202
        retried = raw.parse()
        assert set(retried.model_dump()) == {"id", "status", "created_at"}
        assert retried.id == job_id
        assert retried.status == "in_progress"
        assert retried.created_at == failed.created_at

        done = wait_for(client, job_id)
        assert done.status == "completed", done
        assert done.id == job_id
        assert done.error is None
        assert done.data is not None
        assert done.data.suggestion == "Echo: Write one line about retry me"
        assert done.completed_at is not None
        assert failed.completed_at is not None
        assert done.completed_at > failed.completed_at
        assert extra(done, "attempts_made") == 2
        attempts = extra(done, "attempts")
        assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "completed")]
        assert attempts[0]["error_class"] == "rejected"
        assert "400" in attempts[0]["error"]
        assert attempts[1]["error_class"] is None
        assert fake.stats(arrivals=False)["requests_total"] == 2
        # Still one job: the retry re-ran it, it did not make another.
        assert total(client, FAKE_AGENT_ID) == 1
        assert total(client, FAKE_AGENT_ID, "failed") == 0
        assert total(client, FAKE_AGENT_ID, "completed") == 1

        # A completed job is not retried again.
        with pytest.raises(writerai.BadRequestError) as caught:
            client.applications.jobs.retry(job_id)
        check_error(caught.value, 400, "BadRequest")


# --- errors: not retryable, another organisation, unknown, invalid inputs ------------------------


async def test_errors(deployment: Deployment, fake: FakeLLM) -> None:
    with client_of(deployment) as client:
        done = client.applications.jobs.create(PRODUCT_ID, inputs=PRODUCT_INPUTS).id
        assert wait_for(client, done).status == "completed"
        fake.control(stall_s=600, script=["stall"])
        hung = client.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("hung")).id

        # Retrying a job that has not failed: 400, and the SDK is told not to retry.
        for job_id, state in ((done, "completed"), (hung, "in_progress")):
            with pytest.raises(writerai.BadRequestError) as caught:
                client.applications.jobs.retry(job_id)
            body = check_error(caught.value, 400, "BadRequest")
            assert state in body["errors"][0]["description"], body
            assert client.applications.jobs.retrieve(job_id).status == state

        # Unknown jobs: 404 (a UUID, and a non-UUID id the SDK happily sends).
        for unknown in (UNKNOWN_ID, "job_id"):
            with pytest.raises(writerai.NotFoundError) as missing:
                client.applications.jobs.retrieve(unknown)
            check_error(missing.value, 404, "NotFound")
            with pytest.raises(writerai.NotFoundError) as missing:
                client.applications.jobs.retry(unknown)
            check_error(missing.value, 404, "NotFound")
        with pytest.raises(writerai.NotFoundError) as missing:
            client.applications.jobs.list(UNKNOWN_ID)
        check_error(missing.value, 404, "NotFound")
        with pytest.raises(writerai.NotFoundError) as missing:
            client.applications.jobs.create(UNKNOWN_ID, inputs=PRODUCT_INPUTS)
        check_error(missing.value, 404, "NotFound")

        # Another organisation sees none of it: 404, never 403 (no hint that it exists).
        other_key = deployment.server.new_key("another-org")
        with client_of(deployment, other_key) as other:
            for job_id in (done, hung):
                with pytest.raises(writerai.NotFoundError) as hidden:
                    other.applications.jobs.retrieve(job_id)
                check_error(hidden.value, 404, "NotFound")
                with pytest.raises(writerai.NotFoundError) as hidden:
                    other.applications.jobs.retry(job_id)
                check_error(hidden.value, 404, "NotFound")
            with pytest.raises(writerai.NotFoundError) as hidden:
                other.applications.jobs.list(PRODUCT_ID)
            check_error(hidden.value, 404, "NotFound")
            with pytest.raises(writerai.NotFoundError) as hidden:
                other.applications.jobs.create(PRODUCT_ID, inputs=PRODUCT_INPUTS)
            check_error(hidden.value, 404, "NotFound")
        assert client.applications.jobs.retrieve(done).status == "completed"

        # Invalid inputs: 400 naming each problem, and nothing is stored.
        before = total(client, PRODUCT_ID)
        assert before == 1
        invalid: list[tuple[list[Any], list[str]]] = [
            ([{"id": "product_names", "value": ["Mug"]}], ["tone"]),
            ([], ["product_names", "tone"]),
            ([*PRODUCT_INPUTS, {"id": "colour", "value": ["red"]}], ["colour"]),
            ([PRODUCT_INPUTS[0], {"id": "tone", "value": ["Sarcastic"]}], ["Sarcastic"]),
            (
                [{"id": "product_names", "value": [str(n) for n in range(11)]}, PRODUCT_INPUTS[1]],
                ["10"],
            ),
            ([{"id": "product_names", "value": ["  "]}, PRODUCT_INPUTS[1]], ["empty"]),
        ]
        for inputs, words in invalid:
            with pytest.raises(writerai.BadRequestError) as bad:
                client.applications.jobs.create(PRODUCT_ID, inputs=inputs)
            body = check_error(bad.value, 400, "BadRequest")
            text = " ".join(e["description"] for e in body["errors"])
            for word in words:
                assert word in text, (inputs, text)
        assert total(client, PRODUCT_ID) == before
        assert total(client, PRODUCT_ID, "in_progress") == 0
        rows = deployment.rows("SELECT count(*) FROM jobs")
        assert rows[0][0] == 2  # the completed job and the hung one, nothing else
