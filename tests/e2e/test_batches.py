"""Batches (extension routes) against real ``copydesk serve`` processes, over httpx.

Rows of the example product agent run on the deterministic provider; rows of the
fake-backed agent call a real fake-LLM server, scripted (``/_control``) to reject some
calls (``"400"``: failed for good) or to hang (``"stall"``), for retry and cancel.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import EXAMPLES, PRODUCT_ID
from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    Deployment,
    FakeLLM,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
)

WAIT_S = 60.0
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class Api:
    """httpx over one deployment, with the key."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )

    def submit(
        self, app_id: str, body: Any, content_type: str = "application/json", **params: Any
    ) -> httpx.Response:
        content = json.dumps(body) if not isinstance(body, (str, bytes)) else body
        return self.http.post(
            f"/v1/applications/{app_id}/batches",
            content=content,
            headers={"content-type": content_type},
            params=params,
        )

    def created(self, app_id: str, body: Any, content_type: str = "application/json") -> str:
        response = self.submit(app_id, body, content_type)
        assert response.status_code == 202, response.text
        batch_id: str = response.json()["id"]
        return batch_id

    def batch(self, batch_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/batches/{batch_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(self, batch_id: str, status: str = "completed") -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            batch = self.batch(batch_id)
            if batch["status"] == status:
                return batch
            if time.monotonic() > deadline:
                pytest.fail(f"batch still {batch['status']} after {WAIT_S:g}s: {batch}")
            time.sleep(0.1)

    def jobs(self, batch_id: str, **params: Any) -> dict[str, Any]:
        response = self.http.get(f"/v1/batches/{batch_id}/jobs", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def results(self, batch_id: str, fmt: str) -> str:
        response = self.http.get(f"/v1/batches/{batch_id}/results", params={"format": fmt})
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture(scope="module")
def api(server: Any) -> Iterator[Api]:
    client = Api(server.url, server.key)
    yield client
    client.http.close()


def product(names: list[str] | str, tone: str = "Playful", **extra: Any) -> dict[str, Any]:
    return {"product_names": names, "tone": tone, **extra}


# --- submit, read, export -------------------------------------------------------------------


def test_json_batch_runs_to_completion_with_counts_usage_and_results(api: Api) -> None:
    rows = [
        product("Ceramic mug", custom_id="mug"),
        {
            "custom_id": "lid",
            "inputs": [
                {"id": "product_names", "value": ["Bamboo lid", "Steel straw"]},
                {"id": "tone", "value": ["Technical"]},
            ],
        },
        product(["Tea towel"], tone="Friendly"),  # no custom_id
    ]
    response = api.submit(PRODUCT_ID, rows)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["object"] == "batch"
    assert created["application_id"] == PRODUCT_ID
    assert created["status"] == "in_progress"
    assert created["priority"] == -1
    assert created["request_counts"] == {
        "total": 3,
        "in_progress": 3,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }

    done = api.wait(created["id"])
    assert done["request_counts"]["completed"] == 3
    assert done["request_counts"]["in_progress"] == 0
    assert done["completed_at"] is not None
    assert done["usage"]["prompt_tokens"] > 0
    assert done["usage"]["completion_tokens"] > 0

    jobs = api.jobs(created["id"])
    assert jobs["total_count"] == 3
    assert [j["row_index"] for j in jobs["result"]] == [0, 1, 2]
    assert [j["custom_id"] for j in jobs["result"]] == ["mug", "lid", None]
    assert jobs["result"][1]["inputs"] == [
        {"id": "product_names", "value": ["Bamboo lid", "Steel straw"]},
        {"id": "tone", "value": ["Technical"]},
    ]
    assert all(j["status"] == "completed" and j["data"]["suggestion"] for j in jobs["result"])
    assert (
        sum(j["usage"]["prompt_tokens"] for j in jobs["result"]) == done["usage"]["prompt_tokens"]
    )
    only = api.jobs(created["id"], custom_id="lid")
    assert only["total_count"] == 1
    assert only["result"][0]["row_index"] == 1
    assert api.jobs(created["id"], status="failed")["total_count"] == 0

    lines = [json.loads(line) for line in api.results(created["id"], "jsonl").splitlines()]
    assert [line["row_index"] for line in lines] == [0, 1, 2]
    assert lines[1]["custom_id"] == "lid"
    assert lines[1]["inputs"] == {
        "product_names": ["Bamboo lid", "Steel straw"],
        "tone": ["Technical"],
    }
    assert lines[0]["status"] == "completed"
    assert lines[0]["error"] is None
    by_row = {j["row_index"]: j for j in jobs["result"]}
    assert all(line["output"] == by_row[line["row_index"]]["data"] for line in lines)

    table = list(csv.DictReader(io.StringIO(api.results(created["id"], "csv"))))
    assert list(table[0]) == [
        "row_index",
        "custom_id",
        "product_names",
        "tone",
        "status",
        "title",
        "suggestion",
        "error",
    ]
    assert [r["row_index"] for r in table] == ["0", "1", "2"]
    assert table[1]["product_names"] == "Bamboo lid|Steel straw"
    assert table[2]["custom_id"] == ""
    assert table[0]["suggestion"] == lines[0]["output"]["suggestion"]

    listed = api.http.get(f"/v1/applications/{PRODUCT_ID}/batches", params={"limit": 100})
    assert created["id"] in [b["id"] for b in listed.json()["data"]]
    everywhere = api.http.get("/v1/batches", params={"limit": 100}).json()
    assert created["id"] in [b["id"] for b in everywhere["data"]]


def test_csv_with_multi_value_cells_and_escapes(api: Api) -> None:
    body = (
        "custom_id,product_names,tone\r\n"
        'a,"Mug|Lid|Straw, steel",Playful\r\n'
        "b,Pipe \\| fitting,Technical\r\n"
        "\r\n"
        "c,Back\\\\slash,Friendly\r\n"
    )
    batch_id = api.created(PRODUCT_ID, body, "text/csv")
    jobs = api.jobs(batch_id)["result"]
    assert [(j["row_index"], j["custom_id"]) for j in jobs] == [(0, "a"), (1, "b"), (2, "c")]
    names = [j["inputs"][0] for j in jobs]
    assert names[0] == {"id": "product_names", "value": ["Mug", "Lid", "Straw, steel"]}
    assert names[1] == {"id": "product_names", "value": ["Pipe | fitting"]}
    assert names[2] == {"id": "product_names", "value": ["Back\\slash"]}
    api.wait(batch_id)
    table = list(csv.DictReader(io.StringIO(api.results(batch_id, "csv"))))
    # the export uses the same separator and escapes: it reads back as it was sent
    assert [r["product_names"] for r in table] == [
        "Mug|Lid|Straw, steel",
        "Pipe \\| fitting",
        "Back\\\\slash",
    ]


def test_jsonl_body(api: Api) -> None:
    lines = [
        json.dumps(product(["One"], custom_id="x1")),
        "",
        json.dumps(product(["Two", "Three"], tone="Luxurious", custom_id="x2")),
    ]
    batch_id = api.created(PRODUCT_ID, "\n".join(lines) + "\n", "application/x-ndjson")
    done = api.wait(batch_id)
    assert done["request_counts"]["total"] == 2
    exported = [json.loads(line) for line in api.results(batch_id, "jsonl").splitlines()]
    assert [(e["custom_id"], e["inputs"]["product_names"]) for e in exported] == [
        ("x1", ["One"]),
        ("x2", ["Two", "Three"]),
    ]


def _batch_total(api: Api) -> int:
    listed = api.http.get(f"/v1/applications/{PRODUCT_ID}/batches", params={"limit": 500})
    return len(listed.json()["data"])


def test_dry_run_reports_every_row_and_creates_nothing(api: Api) -> None:
    before = _batch_total(api)
    rows = [
        product("Mug", custom_id="ok"),
        product("Mug", tone="Grumpy", custom_id="bad-tone"),
        {"custom_id": "ok", "tone": "Playful"},  # no product, and a duplicate custom_id
        "not an object",
    ]
    response = api.submit(PRODUCT_ID, rows, dry_run="true")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["total"], report["valid"], report["invalid"]) == (4, 1, 3)
    assert [r["valid"] for r in report["rows"]] == [True, False, False, False]
    assert {p["rule"] for p in report["rows"][1]["problems"]} == {"dropdown_list"}
    assert {p["rule"] for p in report["rows"][2]["problems"]} == {
        "required",
        "duplicate_custom_id",
    }
    assert report["rows"][3]["problems"][0]["rule"] == "row_shape"
    assert _batch_total(api) == before

    valid = api.submit(PRODUCT_ID, rows[:1], dry_run="true")
    assert valid.status_code == 200
    assert valid.json()["invalid"] == 0
    assert _batch_total(api) == before


def test_an_invalid_row_creates_nothing(api: Api) -> None:
    before = _batch_total(api)
    rows = [product("Mug"), product("Mug", custom_id="r1"), product([], custom_id="r2")]
    rows[1]["colour"] = "red"  # not an input of the agent
    response = api.submit(PRODUCT_ID, rows)
    assert response.status_code == 400, response.text
    assert response.headers["x-should-retry"] == "false"
    body = response.json()
    assert body["tpe"] == "BadRequest"
    where = {(e["extras"]["row_index"], e["extras"]["rule"]) for e in body["errors"]}
    assert where == {(1, "unknown_input"), (2, "required")}
    assert {e["extras"]["custom_id"] for e in body["errors"]} == {"r1", "r2"}
    assert _batch_total(api) == before

    bad_type = api.submit(PRODUCT_ID, "a,b", "text/plain")
    assert bad_type.status_code == 400
    assert api.submit(PRODUCT_ID, "[1,", "application/json").status_code == 400
    assert api.submit(PRODUCT_ID, []).status_code == 400
    assert api.submit(PRODUCT_ID, [product("Mug")], priority="101").status_code == 400
    assert api.submit(UNKNOWN_ID, [product("Mug")]).status_code == 404
    assert api.http.get(f"/v1/batches/{UNKNOWN_ID}").status_code == 404
    assert api.http.get(f"/v1/batches/{UNKNOWN_ID}/results").status_code == 404
    assert api.http.get(f"/v1/batches/{UNKNOWN_ID}/events").status_code == 404
    assert _batch_total(api) == before


def test_batches_are_private_to_their_organisation(server: Any, api: Api) -> None:
    batch_id = api.created(PRODUCT_ID, [product("Mug")])
    other = Api(server.url, server.new_key("someone-else"))
    try:
        assert other.http.get(f"/v1/batches/{batch_id}").status_code == 404
        assert other.http.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
        assert other.http.get("/v1/batches").json()["data"] == []
    finally:
        other.http.close()


def test_events_stream_progress_and_rows_until_done(api: Api) -> None:
    batch_id = api.created(PRODUCT_ID, [product(f"Item {i}", custom_id=f"c{i}") for i in range(5)])
    events: list[tuple[str, dict[str, Any]]] = []
    with api.http.stream("GET", f"/v1/batches/{batch_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                assert kind is not None
                events.append((kind, json.loads(line[len("data: ") :])))
                if kind == "done":
                    break
    kinds = [k for k, _ in events]
    assert kinds[0] == "progress"
    assert kinds[-1] == "done"
    rows = [data for k, data in events if k == "row"]
    assert sorted(r["row_index"] for r in rows) == list(range(5))
    assert {r["custom_id"] for r in rows} == {f"c{i}" for i in range(5)}
    assert all(r["status"] == "completed" for r in rows)
    done = events[-1][1]
    assert done["status"] == "completed"
    assert done["request_counts"]["completed"] == 5
    # a finished batch answers at once: its progress, every row, done
    with api.http.stream("GET", f"/v1/batches/{batch_id}/events") as again:
        text = "".join(again.iter_text())
    assert text.count("event: row") == 5
    assert text.rstrip().split("\n")[-2] == "event: done"


# --- retry and cancel, against the fake LLM ------------------------------------------------------


def topic_rows(count: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"t{i}", "topic": f"topic {i}"} for i in range(count)]


@pytest.fixture
def fake(fake_llm: Callable[..., FakeLLM]) -> FakeLLM:
    return fake_llm()


def embedded(deployments: Any, fake: FakeLLM, **provider: Any) -> Deployment:
    env = {
        **fake.provider_env(TIMEOUT_S=300, **provider),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployed: Deployment = deployments("embedded", env=env)
    return deployed


def test_retry_requeues_only_the_failed_rows(deployments: Any, fake: FakeLLM) -> None:
    deployment = embedded(deployments, fake, MAX_CONCURRENCY=1)
    fake.control(script=["400", "ok", "400", "ok", "ok", "ok"])
    api = Api(deployment.url, deployment.key)
    batch_id = api.created(FAKE_AGENT_ID, topic_rows(6))
    first = api.wait(batch_id)
    assert first["request_counts"] == {
        "total": 6,
        "in_progress": 0,
        "completed": 4,
        "failed": 2,
        "cancelled": 0,
    }
    before = {j["id"]: j for j in api.jobs(batch_id, limit=10)["result"]}
    failed = {i for i, j in before.items() if j["status"] == "failed"}
    assert len(failed) == 2
    calls = fake.stats()["requests_total"]

    response = api.http.post(f"/v1/batches/{batch_id}/retry")
    assert response.status_code == 202, response.text
    assert response.json()["request_counts"]["failed"] == 0
    second = api.wait(batch_id)
    assert second["request_counts"]["completed"] == 6
    after = {j["id"]: j for j in api.jobs(batch_id, limit=10)["result"]}
    for job_id, job in before.items():
        if job_id in failed:
            assert after[job_id]["status"] == "completed"
            assert after[job_id]["attempts_made"] == 2
        else:  # untouched: same result, same end, one attempt
            assert after[job_id] == job
    assert fake.stats()["requests_total"] == calls + 2  # only the failed rows ran again
    # nothing left to retry: harmless
    assert api.http.post(f"/v1/batches/{batch_id}/retry").status_code == 202
    assert api.batch(batch_id)["request_counts"]["completed"] == 6
    api.http.close()


def test_cancel_stops_queued_and_running_rows_and_is_harmless_twice(
    deployments: Any, fake: FakeLLM
) -> None:
    deployment = embedded(deployments, fake, MAX_CONCURRENCY=1)
    fake.control(script=["stall"] * 10)
    api = Api(deployment.url, deployment.key)
    batch_id = api.created(FAKE_AGENT_ID, topic_rows(4))
    deadline = time.monotonic() + WAIT_S
    while api.jobs(batch_id, status="running")["total_count"] == 0:
        assert time.monotonic() < deadline, "no row started"
        time.sleep(0.1)

    response = api.http.post(f"/v1/batches/{batch_id}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["request_counts"]["cancelled"] == 4
    assert cancelled["request_counts"]["in_progress"] == 0
    jobs = api.jobs(batch_id, status="cancelled")["result"]
    assert len(jobs) == 4
    assert all(j["error"] == "cancelled by request" for j in jobs)

    again = api.http.post(f"/v1/batches/{batch_id}/cancel")
    assert again.status_code == 200
    assert again.json()["cancelled_at"] == cancelled["cancelled_at"]
    assert again.json()["request_counts"] == cancelled["request_counts"]
    refused = api.http.post(f"/v1/batches/{batch_id}/retry")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["key"] == "fail.badRequest.batchNotRetryable"
    time.sleep(1.0)  # a queued row never starts, a running one never completes
    assert api.batch(batch_id)["request_counts"]["cancelled"] == 4
    api.http.close()


# --- PostgreSQL scale-out (PgQueuer entries written with the batch) ---------------------------


@pytest.mark.postgres
def test_scaleout_batch_runs_through_pgqueuer(deployments: Any) -> None:
    deployment: Deployment = deployments("scaleout", agents=[EXAMPLES])
    api = Api(deployment.url, deployment.key)
    batch_id = api.created(PRODUCT_ID, [product(f"Item {i}", custom_id=f"p{i}") for i in range(20)])
    done = api.wait(batch_id)
    assert done["request_counts"]["completed"] == 20
    exported = [json.loads(x) for x in api.results(batch_id, "jsonl").splitlines()]
    assert [e["row_index"] for e in exported] == list(range(20))
    api.http.close()


# --- size -------------------------------------------------------------------------------------


def test_fifty_thousand_rows_submit_in_one_request(deployments: Any) -> None:
    deployment: Deployment = deployments("embedded", agents=[EXAMPLES], serve_workers=False)
    api = Api(deployment.url, deployment.key)
    body = "custom_id,product_names,tone\n" + "".join(
        f"row-{i},Product {i}|Variant {i % 7},Playful\n" for i in range(50_000)
    )
    batch_id = api.created(PRODUCT_ID, body, "text/csv")
    batch = api.batch(batch_id)
    assert batch["request_counts"]["total"] == 50_000
    assert batch["request_counts"]["in_progress"] == 50_000
    last = api.jobs(batch_id, custom_id="row-49999")["result"][0]
    assert last["row_index"] == 49_999
    assert last["inputs"][0]["value"] == ["Product 49999", "Variant 5"]
    api.http.close()
