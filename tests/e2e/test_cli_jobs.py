"""``copydesk jobs``: the CLI as a subprocess, talking over HTTP to real ``copydesk serve``
processes (the deterministic provider; the fake LLM server for failing and stalled rows).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    CLI_TIMEOUT_S,
    PRODUCT_ID,
    REPO,
    clean_env,
    copydesk,
    copydesk_in_process,
)
from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    Deployment,
    FakeLLM,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
)

#: The first test runs the CLI as a subprocess (the installed entry point); the others run
#: it in this process against the same real servers, so its code counts in the coverage.
run_cli = copydesk_in_process

EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
TONES = ["Playful", "Friendly", "Professional"]


def cli_env(url: str, key: str) -> dict[str, str]:
    return clean_env(COPYDESK_BASE_URL=url, WRITER_API_KEY=key)


@pytest.fixture
def env(server: Any) -> dict[str, str]:
    return cli_env(server.url, server.key)


def write_csv(path: Path, count: int) -> Path:
    lines = ["custom_id,product_names,tone"]
    lines += [f"p{i},Item {i}|Spare {i},{TONES[i % 3]}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_submit_a_csv_writes_every_result_in_row_order(env: dict[str, str], tmp_path: Path) -> None:
    rows = write_csv(tmp_path / "rows.csv", 20)
    results = tmp_path / "results.csv"

    submitted = copydesk(env, "jobs", "submit", PRODUCT_ID, rows, "--out", results)

    batch_id = submitted.stdout.strip()
    assert len(batch_id) == 36, submitted.stdout
    # not a terminal: plain progress lines, ending with the summary
    assert f"batch {batch_id}: 20/20 done" in submitted.stderr
    assert "20 completed, 0 failed, 0 cancelled" in submitted.stderr
    assert not (tmp_path / "results.csv.part").exists()
    table = list(csv.DictReader(io.StringIO(results.read_text(encoding="utf-8"))))
    assert [r["row_index"] for r in table] == [str(i) for i in range(20)]
    assert [r["custom_id"] for r in table] == [f"p{i}" for i in range(20)]
    assert table[3]["product_names"] == "Item 3|Spare 3"
    assert all(r["status"] == "completed" and r["suggestion"] for r in table)

    # the export is the same file; JSONL by --out's suffix or --format
    exported = run_cli(env, "jobs", "export", batch_id, "--format", "csv")
    assert exported.stdout == results.read_text(encoding="utf-8")
    as_jsonl = tmp_path / "results.jsonl"
    run_cli(env, "jobs", "export", batch_id, "--out", as_jsonl)
    lines = [json.loads(line) for line in as_jsonl.read_text(encoding="utf-8").splitlines()]
    assert [line["row_index"] for line in lines] == list(range(20))
    assert [line["output"]["suggestion"] for line in lines] == [r["suggestion"] for r in table]

    status = run_cli(env, "jobs", "status", batch_id)
    assert f"batch {batch_id} completed: 20 completed" in status.stdout


def test_submit_jsonl_by_application_name(env: dict[str, str], tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"custom_id": "a", "product_names": ["Lamp"], "tone": "Friendly"})
        + "\n"
        + json.dumps({"custom_id": "b", "product_names": ["Desk", "Chair"], "tone": "Playful"})
        + "\n",
        encoding="utf-8",
    )
    results = tmp_path / "out.jsonl"

    submitted = run_cli(env, "jobs", "submit", "Product description writer", rows, "--out", results)

    lines = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    assert [(r["custom_id"], r["status"]) for r in lines] == [
        ("a", "completed"),
        ("b", "completed"),
    ]
    exported = run_cli(env, "jobs", "export", submitted.stdout.strip())
    assert exported.stdout == results.read_text(encoding="utf-8")


def test_dry_run_and_invalid_rows(env: dict[str, str], tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(
        json.dumps([{"product_names": ["Mug"], "tone": "Playful"}, {"tone": "Sarcastic"}]),
        encoding="utf-8",
    )

    dry = run_cli(env, "jobs", "submit", PRODUCT_ID, rows, "--dry-run", check=False)
    assert dry.returncode == EXIT_ROWS_FAILED, dry.stderr
    assert "2 rows, 1 valid, 1 invalid" in dry.stderr
    assert "row 1: " in dry.stderr

    refused = run_cli(env, "jobs", "submit", PRODUCT_ID, rows, check=False)
    assert refused.returncode == EXIT_USAGE
    assert refused.stdout == ""  # nothing created
    assert "row 1" in refused.stderr

    unknown = run_cli(env, "jobs", "submit", "No such writer", rows, check=False)
    assert unknown.returncode == EXIT_USAGE
    assert "no application named 'No such writer'" in unknown.stderr

    wrong_type = tmp_path / "rows.txt"
    wrong_type.write_text("x", encoding="utf-8")
    usage = run_cli(env, "jobs", "submit", PRODUCT_ID, wrong_type, check=False)
    assert usage.returncode == EXIT_USAGE
    assert ".csv, .jsonl" in usage.stderr


def test_a_bad_or_missing_key_exits_2_with_the_message(server: Any, tmp_path: Path) -> None:
    rows = write_csv(tmp_path / "rows.csv", 1)
    bad = cli_env(server.url, "cd_000000000000_notarealkeynotarealkey")

    refused = run_cli(bad, "jobs", "submit", PRODUCT_ID, rows, check=False)
    assert refused.returncode == EXIT_USAGE
    body = httpx.get(
        server.url + "/v1/applications", headers={"Authorization": "Bearer cd_000000000000_x"}
    ).json()
    assert body["errors"][0]["description"] in refused.stderr

    missing = run_cli(clean_env(COPYDESK_BASE_URL=server.url), "jobs", "status", "x", check=False)
    assert missing.returncode == EXIT_USAGE
    assert "WRITER_API_KEY" in missing.stderr

    nowhere = cli_env("http://127.0.0.1:9", server.key)
    unreachable = run_cli(nowhere, "jobs", "status", "x", check=False)
    assert unreachable.returncode == EXIT_USAGE
    assert "cannot reach the server" in unreachable.stderr


# --- against the fake LLM: failing and stalled rows --------------------------------------------


@pytest.fixture
def fake(fake_llm: Callable[..., FakeLLM]) -> FakeLLM:
    return fake_llm()


def embedded(deployments: Any, fake: FakeLLM) -> Deployment:
    env = {
        **fake.provider_env(TIMEOUT_S=300, MAX_CONCURRENCY=1),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployed: Deployment = deployments("embedded", env=env)
    return deployed


def topic_rows(path: Path, count: int) -> Path:
    path.write_text(
        "custom_id,topic\n" + "".join(f"t{i},topic {i}\n" for i in range(count)), encoding="utf-8"
    )
    return path


def test_failed_rows_exit_1_then_retry_failed(
    deployments: Any, fake: FakeLLM, tmp_path: Path
) -> None:
    deployment = embedded(deployments, fake)
    env = cli_env(deployment.url, deployment.key)
    fake.control(script=["400", "ok", "400", "ok", "ok", "ok"])
    results = tmp_path / "results.csv"

    submitted = run_cli(
        env, "jobs", "submit", FAKE_AGENT_ID, topic_rows(tmp_path / "rows.csv", 6),
        "--out", results, check=False,
    )  # fmt: skip

    assert submitted.returncode == EXIT_ROWS_FAILED, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert "4 completed, 2 failed, 0 cancelled" in submitted.stderr
    assert submitted.stderr.count(" failed: ") == 2  # each failed row, with its error
    table = list(csv.DictReader(io.StringIO(results.read_text(encoding="utf-8"))))
    assert [r["status"] for r in table].count("failed") == 2
    assert all(r["error"] for r in table if r["status"] == "failed")

    retried = run_cli(env, "jobs", "retry-failed", batch_id)
    assert f"batch {batch_id} in_progress" in retried.stdout
    assert "0 failed" in retried.stdout
    deadline = time.monotonic() + 60
    while "in_progress" in run_cli(env, "jobs", "status", batch_id).stdout:
        assert time.monotonic() < deadline, "the retried rows never finished"
        time.sleep(0.2)
    assert "6 completed, 0 failed" in run_cli(env, "jobs", "status", batch_id).stdout


def test_cancel_a_job_and_a_followed_batch(deployments: Any, fake: FakeLLM, tmp_path: Path) -> None:
    deployment = embedded(deployments, fake)
    env = cli_env(deployment.url, deployment.key)
    fake.control(script=["stall"] * 10)
    headers = {"Authorization": f"Bearer {deployment.key}"}
    job = httpx.post(
        f"{deployment.url}/v1/applications/{FAKE_AGENT_ID}/jobs",
        json={"inputs": [{"id": "topic", "value": ["alone"]}]},
        headers=headers,
        timeout=30,
    ).json()

    cancelled_job = run_cli(env, "jobs", "cancel", job["id"])
    assert cancelled_job.stdout.strip() == f"job {job['id']} cancelled"
    again = run_cli(env, "jobs", "cancel", "--job", job["id"])
    assert again.stdout.strip() == f"job {job['id']} cancelled"

    # a batch followed by `submit` while another CLI call cancels it
    follower = subprocess.Popen(
        [
            sys.executable, "-m", "copydesk", "jobs", "submit", FAKE_AGENT_ID,
            str(topic_rows(tmp_path / "rows.csv", 3)), "--out", str(tmp_path / "results.jsonl"),
        ],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        batch_id = follower.stdout.readline().strip()
        cancelled = run_cli(env, "jobs", "cancel", batch_id)  # not a job: the batch
        assert cancelled.stdout.startswith(f"batch {batch_id} cancelled: 0 completed")
        assert "3 cancelled" in cancelled.stdout
        stderr = follower.communicate(timeout=CLI_TIMEOUT_S)[1]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == EXIT_ROWS_FAILED, stderr
    assert f"batch {batch_id} cancelled" in stderr
    lines = (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["cancelled"] * 3

    unknown = run_cli(env, "jobs", "cancel", "00000000-0000-4000-8000-000000000000", check=False)
    assert unknown.returncode == EXIT_USAGE
    assert "batch" in unknown.stderr.lower()
