"""``Idempotency-Key`` on creates (J1, J4, F1) against real servers: the embedded default
(``copydesk serve`` on SQLite) and the scale-out (PostgreSQL, PgQueuer, a worker process).

The official ``writer-sdk`` sends the header through ``extra_headers``; concurrent
duplicates are raw httpx requests fired at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import writerai

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
from tests.e2e.test_jobs_sdk import PRODUCT_INPUTS, client_of, total, wait_for

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def stored_blobs(root: Path) -> int:
    """Files in the local blob store (under its fan-out folders), temporary ones included."""
    return sum(1 for path in root.rglob("*") if path.is_file())


def any_inputs(inputs: list[dict[str, Any]]) -> Any:
    """Inputs as the SDK's typed parameter accepts them."""
    return inputs


def key() -> dict[str, str]:
    return {HEADER: f"test-{uuid.uuid4()}"}


def conflict(exc: writerai.APIStatusError) -> dict[str, Any]:
    assert exc.status_code == 409, exc
    assert exc.response.headers["x-should-retry"] == "false"
    body = exc.body
    assert isinstance(body, dict)
    assert body["tpe"] == "Conflict"
    assert body["errors"][0]["key"] == "fail.conflict.idempotencyKeyReused"
    return body


async def duplicates(
    deployment: Deployment, path: str, headers: dict[str, str], n: int, **request: Any
) -> list[httpx.Response]:
    """``n`` identical POSTs sent at once, each on its own connection."""
    auth = {"Authorization": f"Bearer {deployment.key}", **headers}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=deployment.url, headers=auth, limits=limits, timeout=60
    ) as http:
        return await asyncio.gather(*(http.post(path, **request) for _ in range(n)))


@pytest.fixture(params=KINDS)
def deployment(
    request: pytest.FixtureRequest, deployments: Any, fake_llm: Callable[..., FakeLLM]
) -> tuple[Deployment, FakeLLM]:
    fake = fake_llm()
    env = {**fake.provider_env(MAX_CONCURRENCY=8), "COPYDESK_POLL_INTERVAL_S": "0.2"}
    return deployments(request.param, env=env, agents=[EXAMPLES]), fake


async def test_job_creates_and_retries_are_idempotent(
    deployment: tuple[Deployment, FakeLLM],
) -> None:
    deployed, fake = deployment
    with client_of(deployed) as client:
        jobs = client.applications.jobs
        # J1: the replay answers the first request's status and body, marked as a replay.
        headers = key()
        first = jobs.with_raw_response.create(
            PRODUCT_ID, inputs=PRODUCT_INPUTS, extra_headers=headers
        )
        assert first.status_code == 202
        assert REPLAYED not in first.headers
        again = jobs.with_raw_response.create(
            PRODUCT_ID, inputs=PRODUCT_INPUTS, extra_headers=headers
        )
        assert again.status_code == 202
        assert again.headers[REPLAYED] == "true"
        assert again.http_response.content == first.http_response.content
        assert again.parse().id == first.parse().id
        assert total(client, PRODUCT_ID) == 1

        # The same key with another body (or another application) is a conflict.
        other = [{"id": "product_names", "value": ["Teapot"]}, PRODUCT_INPUTS[1]]
        with pytest.raises(writerai.ConflictError) as caught:
            jobs.create(PRODUCT_ID, inputs=other, extra_headers=headers)
        conflict(caught.value)
        with pytest.raises(writerai.ConflictError):
            jobs.create(FAKE_AGENT_ID, inputs=any_inputs(topic("x")), extra_headers=headers)
        assert total(client, PRODUCT_ID) == 1

        # A request that failed (400) keeps nothing: the fixed request uses the same key.
        fixing = key()
        with pytest.raises(writerai.BadRequestError):
            jobs.create(PRODUCT_ID, inputs=PRODUCT_INPUTS[:1], extra_headers=fixing)
        fixed = jobs.with_raw_response.create(
            PRODUCT_ID, inputs=PRODUCT_INPUTS, extra_headers=fixing
        )
        assert fixed.status_code == 202
        assert REPLAYED not in fixed.headers
        assert total(client, PRODUCT_ID) == 2

        # A key longer than 255 characters is refused before anything is done.
        with pytest.raises(writerai.BadRequestError) as bad:
            jobs.create(PRODUCT_ID, inputs=PRODUCT_INPUTS, extra_headers={HEADER: "k" * 256})
        assert "Idempotency-Key" in str(bad.value.body)
        assert total(client, PRODUCT_ID) == 2

        # 20 concurrent duplicates: one job, and every answer names it.
        path = f"/v1/applications/{PRODUCT_ID}/jobs"
        answers = await duplicates(deployed, path, key(), 20, json={"inputs": PRODUCT_INPUTS})
        assert [r.status_code for r in answers] == [202] * 20, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert len({r.content for r in answers}) == 1
        assert sum(r.headers.get(REPLAYED) == "true" for r in answers) == 19
        assert total(client, PRODUCT_ID) == 3

        # J4: retrying a failed job with a key; the replay is a 202 again, not a 400
        # ("only failed jobs can be retried") and not a second run.
        fake.control(script=["400"])
        job_id = jobs.create(FAKE_AGENT_ID, inputs=any_inputs(topic("retry me"))).id
        assert wait_for(client, job_id).status == "failed"
        retry_key = key()
        retried = jobs.with_raw_response.retry(job_id, extra_headers=retry_key)
        assert retried.status_code == 202
        assert wait_for(client, job_id).status == "completed"
        replayed = jobs.with_raw_response.retry(job_id, extra_headers=retry_key)
        assert replayed.status_code == 202
        assert replayed.headers[REPLAYED] == "true"
        assert replayed.http_response.content == retried.http_response.content
        assert fake.stats(arrivals=False)["requests_total"] == 2  # the failure, the retry
        with pytest.raises(writerai.BadRequestError):  # without the key: a real second retry
            jobs.retry(job_id)

        # A batch create (a CSV body): concurrent duplicates make one batch of one job per row.
        csv = "custom_id,product_names,tone\nr1,Mug|Lid,Playful\nr2,Kettle,Playful\n"
        path = f"/v1/applications/{PRODUCT_ID}/batches"
        batch_key = key()
        answers = await duplicates(
            deployed,
            path,
            {**batch_key, "Content-Type": "text/csv"},
            10,
            content=csv.encode(),
        )
        assert [r.status_code for r in answers] == [202] * 10, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert total(client, PRODUCT_ID) == 5  # 3 single jobs, 2 rows
        changed = deployed.server.http(
            "POST",
            path,
            headers={**batch_key, "Content-Type": "text/csv"},
            content=csv.replace("Kettle", "Teapot").encode(),
        )
        assert changed.status_code == 409
        assert changed.headers["x-should-retry"] == "false"

    (stored,) = deployed.rows("SELECT count(*) FROM idempotency_keys WHERE state = 'done'")
    assert stored == (5,)  # first, fixing, the duplicates, the retry, the batch


async def test_file_upload_replays_without_storing_a_second_blob(deployments: Any) -> None:
    deployed: Deployment = deployments("embedded")
    blobs = deployed.server.data_dir / "files"
    content = b"Idempotent notes.\n" * 100_000  # 1.8 MB, streamed in many chunks
    with client_of(deployed) as client:
        headers = key()

        def upload(data: bytes, name: str = "notes.txt") -> Any:
            return client.files.with_raw_response.upload(
                content=data,
                content_disposition=f"attachment; filename={name}",
                content_type="text/plain",
                extra_headers=headers,
            )

        first = upload(content)
        assert first.status_code == 200
        assert REPLAYED not in first.headers
        again = upload(content)
        assert again.headers[REPLAYED] == "true"
        assert again.parse().id == first.parse().id
        assert again.http_response.content == first.http_response.content
        assert stored_blobs(blobs) == 1

        # Another body or another name with the same key: a conflict, nothing stored.
        for data, name in ((content + b"!", "notes.txt"), (content, "other.txt")):
            with pytest.raises(writerai.ConflictError) as caught:
                upload(data, name)
            conflict(caught.value)
        assert stored_blobs(blobs) == 1
        assert len(client.files.list().data) == 1

        # Concurrent duplicate uploads: one file.
        answers = await duplicates(
            deployed,
            "/v1/files",
            {**key(), "Content-Disposition": "attachment; filename=same.txt"},
            10,
            content=content,
        )
        assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert stored_blobs(blobs) == 2
        assert len(client.files.list().data) == 2
