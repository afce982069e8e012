"""Webhooks end to end: a real ``copydesk serve`` (embedded worker) against the fake LLM,
and a real HTTP receiver in the test that verifies every Standard Webhooks signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import CopydeskServer
from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    DeployFactory,
    Deployment,
    FakeLLM,
    deployments_fixture,
    fake_llm_fixture,
)

__all__ = ["deployments_fixture", "fake_llm_fixture"]


@dataclass
class Received:
    path: str
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    signature_ok: bool


@dataclass
class Receiver:
    """A threaded HTTP server: records each POST, checks its signature with the secret
    registered for its path, and answers the next status scripted for that path (200
    once the script is used up)."""

    server: ThreadingHTTPServer
    secrets: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        pytest.fail(f"{path}: {len(self.at(path))} deliveries, wanted {count}: {self.received}")


def verify(secret: str, headers: Any, body: bytes) -> bool:
    """Standard Webhooks verification, written here independently of Copydesk."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [
        s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and any(hmac.compare_digest(expected, s) for s in given)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state["r"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with rec.lock:
                secret = rec.secrets.get(self.path, "")
                ok = bool(secret) and verify(secret, self.headers, body)
                rec.received.append(
                    Received(
                        self.path,
                        self.headers["webhook-id"],
                        int(self.headers["webhook-timestamp"]),
                        json.loads(body),
                        ok,
                    )
                )
                script = rec.scripts.get(self.path) or []
                status = script.pop(0) if script else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(httpd)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def register(
    deployment: Deployment | CopydeskServer, url: str, events: list[str], key: str | None = None
) -> httpx.Response:
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        return http.post(
            "/v1/webhooks",
            json={"url": url, "events": events},
            headers={"Authorization": f"Bearer {key or deployment.key}"},
        )


def test_signed_deliveries_retries_log_and_redelivery(
    deployments: DeployFactory, fake_llm: Any, receiver: Receiver
) -> None:
    llm: FakeLLM = fake_llm()
    llm.control(reject_400_if_contains="poison")
    env = {
        **llm.provider_env(),
        "COPYDESK_WEBHOOK_ALLOW": '["127.0.0.1"]',
        "COPYDESK_WEBHOOK_BACKOFF_S": "[0.3]",
        "COPYDESK_WEBHOOK_POLL_S": "0.1",
    }
    deployed = deployments("embedded", env=env)
    http = httpx.Client(
        base_url=deployed.url, timeout=30, headers={"Authorization": f"Bearer {deployed.key}"}
    )

    both = register(deployed, receiver.url("/both"), ["job.completed", "job.failed"])
    assert both.status_code == 201, both.text
    flaky = register(deployed, receiver.url("/flaky"), ["job.completed"])
    assert flaky.status_code == 201, flaky.text
    receiver.secrets["/both"] = both.json()["secret"]
    receiver.secrets["/flaky"] = flaky.json()["secret"]
    receiver.scripts["/flaky"] = [500, 500]
    assert both.json()["secret"].startswith("whsec_")
    listed = http.get("/v1/webhooks").json()["data"]
    assert [e["id"] for e in listed] == [both.json()["id"], flaky.json()["id"]]
    assert all("secret" not in e for e in listed)  # shown on create only

    with CopydeskServer.client(deployed.server) as client:  # the official writer-sdk
        good = client.applications.jobs.create(
            FAKE_AGENT_ID, inputs=[{"id": "topic", "value": ["bread"]}]
        ).id
        bad = client.applications.jobs.create(
            FAKE_AGENT_ID, inputs=[{"id": "topic", "value": ["poison"]}]
        ).id

    got = {r.body["type"]: r for r in receiver.wait("/both", 2)}
    assert got["job.completed"].body["data"]["id"] == good
    assert got["job.completed"].body["data"]["status"] == "completed"
    assert got["job.completed"].body["data"]["data"]["suggestion"]
    assert got["job.failed"].body["data"]["id"] == bad
    assert "rejected" in got["job.failed"].body["data"]["error"]

    # 500, 500, then 200: three attempts of one message, the same webhook-id each time.
    tries = receiver.wait("/flaky", 3)
    assert len({r.webhook_id for r in tries}) == 1
    assert tries[0].webhook_id == got["job.completed"].webhook_id  # one event, two endpoints
    assert tries[2].timestamp >= tries[0].timestamp
    time.sleep(0.5)
    assert len(receiver.at("/flaky")) == 3  # delivered: not sent again

    def log_of(endpoint_id: str) -> list[dict[str, Any]]:
        answer = http.get(f"/v1/webhooks/{endpoint_id}/deliveries")
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    deadline = time.monotonic() + 10
    while (entry := log_of(flaky.json()["id"])[0])["status"] != "delivered":
        assert time.monotonic() < deadline, entry
        time.sleep(0.1)
    assert (entry["attempts"], entry["last_status"]) == (3, 200)
    assert entry["event_id"] == tries[0].webhook_id
    assert entry["delivered_at"] is not None
    assert entry["next_attempt_at"] is None

    # Redelivery sends the same message again.
    completed = next(d for d in log_of(both.json()["id"]) if d["event_type"] == "job.completed")
    again = http.post(f"/v1/webhooks/deliveries/{completed['id']}/redeliver")
    assert again.status_code == 202, again.text
    resent = receiver.wait("/both", 3)[2]
    assert resent.webhook_id == completed["event_id"]
    assert resent.body == got["job.completed"].body

    assert all(r.signature_ok for r in receiver.received), receiver.received

    # Another organisation sees none of it.
    other = deployed.server.new_key("globex")
    for method, path in [
        ("GET", f"/v1/webhooks/{both.json()['id']}"),
        ("GET", f"/v1/webhooks/{both.json()['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{both.json()['id']}"),
        ("POST", f"/v1/webhooks/deliveries/{completed['id']}/redeliver"),
    ]:
        answer = deployed.server.http(method, path, api_key=other)
        assert answer.status_code == 404, (method, path, answer.text)
    assert deployed.server.http("GET", "/v1/webhooks", api_key=other).json() == {"data": []}

    assert http.delete(f"/v1/webhooks/{both.json()['id']}").status_code == 204
    assert http.get(f"/v1/webhooks/{both.json()['id']}").status_code == 404
    http.close()


def test_loopback_urls_are_refused_without_the_allow_list(launch: Any, tmp_path: Path) -> None:
    server: CopydeskServer = launch()

    refused = register(server, "http://127.0.0.1:9/hook", ["job.completed"])

    assert refused.status_code == 400
    assert refused.headers["x-should-retry"] == "false"
    [problem] = refused.json()["errors"]
    assert "private or reserved address (127.0.0.1)" in problem["description"]
    assert "COPYDESK_WEBHOOK_ALLOW" in problem["description"]
    assert problem["extras"]["input"] == "url"
    assert register(server, "ftp://hooks.example.com/", ["job.completed"]).status_code == 400
    assert register(server, "https://hooks.example.com/", ["job.started"]).status_code == 400
    assert server.http("GET", "/v1/webhooks").json() == {"data": []}


def test_batch_completed_is_sent_when_the_last_row_ends_without_a_read(
    deployments: DeployFactory, fake_llm: Any, receiver: Receiver
) -> None:
    llm: FakeLLM = fake_llm()
    llm.control(reject_400_if_contains="poison")
    env = {
        **llm.provider_env(),
        "COPYDESK_WEBHOOK_ALLOW": '["127.0.0.1"]',
        "COPYDESK_WEBHOOK_POLL_S": "0.1",
    }
    deployed = deployments("embedded", env=env)
    hook = register(deployed, receiver.url("/batches"), ["batch.completed"])
    assert hook.status_code == 201, hook.text
    receiver.secrets["/batches"] = hook.json()["secret"]
    rows = [{"custom_id": f"r{i}", "topic": t} for i, t in enumerate(["a", "poison", "b"])]
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        auth = {"Authorization": f"Bearer {deployed.key}"}
        created = http.post(
            f"/v1/applications/{FAKE_AGENT_ID}/batches", json=rows, headers=auth
        ).json()

        # Nobody reads the batch: the last row's outcome announces it.
        [event] = receiver.wait("/batches", 1)
        assert event.signature_ok
        assert event.body["type"] == "batch.completed"
        data = event.body["data"]
        assert data["id"] == created["id"]
        assert data["request_counts"] == {
            "total": 3,
            "in_progress": 0,
            "completed": 2,
            "failed": 1,
            "cancelled": 0,
        }
        batch = http.get(f"/v1/batches/{created['id']}", headers=auth).json()
        assert batch["status"] == "completed"
        # the last row's end (the API writes Z, webhook payloads +00:00)
        assert batch["completed_at"].replace("Z", "+00:00") == data["completed_at"]
    time.sleep(0.5)
    assert len(receiver.at("/batches")) == 1  # the read marked nothing again
