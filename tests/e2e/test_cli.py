"""The ``copydesk`` command as a user runs it: a subprocess over a fresh data dir."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import (
    EXAMPLES,
    LISTENING,
    PRODUCT_ID,
    SOCIAL_ID,
    ListeningProcess,
    clean_env,
    copydesk_in_process,
    write_agent,
)

#: The agents and keys commands only open the data dir's database: they run in this
#: process (typer's runner), so their code counts in the coverage; `serve` below and the
#: jobs CLI's first test run as real subprocesses.
run_cli = copydesk_in_process

EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
KEY = re.compile(r"^cd_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: its own data dir, the deterministic "local" provider."""
    return clean_env(
        COPYDESK_DATA_DIR=str(tmp_path / "data"),
        COPYDESK_CACHE_DIR=str(tmp_path / "cache"),
        COPYDESK_PROVIDERS__LOCAL__KIND="deterministic",
    )


def listed_agents(env: dict[str, str]) -> str:
    return run_cli(env, "agents", "list").stdout


# --- agents deploy: validation -------------------------------------------------------------

BAD_AGENT = """\
name: Broken agent
inputs:
  - name: topic
    input_type: txt
temprature: 0.5
"""


def test_invalid_file_names_the_file_the_field_and_the_fix(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "agents"
    good = write_agent(folder, "a-good.yaml", f"id: {uuid.uuid4()}\nname: Good\nprompt: Hi\n")
    bad = write_agent(folder, "b-bad.yaml", BAD_AGENT)
    result = run_cli(env, "agents", "deploy", folder, check=False)
    assert result.returncode == EXIT_INVALID
    message = result.stderr
    assert str(bad) in message
    assert str(good) not in message
    assert "field 'inputs.0.input_type'" in message
    assert "'text', 'dropdown', 'file' or 'media'" in message  # what to write instead
    assert "field 'prompt' is required: add it" in message
    assert "field 'temprature' is not a known field: remove it or check its spelling" in message
    assert "Traceback" not in message
    # Every file is checked before any is deployed: the good one was not deployed either.
    assert "Good" not in listed_agents(env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: X\nprompt: '{{ topic }}'\n", "field 'prompt': refers to 'topic', which is not"),
        ("name: X\nprompt: '{% if %}'\n", "field 'prompt': template syntax error"),
        ("name: X\nprompt: Hi\nmodel:\n  provider: nowhere\n", "field 'model.provider'"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "the file must hold a mapping"),
        (
            "name: X\nprompt: Hi\ninputs:\n  - name: tone\n    input_type: dropdown\n",
            "a dropdown input needs options.list",
        ),
    ],
    ids=[
        "unknown-variable",
        "template-syntax",
        "unknown-provider",
        "yaml",
        "not-mapping",
        "dropdown",
    ],
)
def test_each_kind_of_invalid_file(
    env: dict[str, str], tmp_path: Path, text: str, expected: str
) -> None:
    path = write_agent(tmp_path, "agent.yaml", text)
    result = run_cli(env, "agents", "deploy", path, check=False)
    assert result.returncode == EXIT_INVALID
    assert str(path) in result.stderr
    assert expected in result.stderr


def test_unknown_provider_lists_the_configured_ones(env: dict[str, str], tmp_path: Path) -> None:
    path = write_agent(tmp_path, "agent.yaml", "name: X\nprompt: Hi\nmodel:\n  provider: gpt\n")
    result = run_cli(env, "agents", "deploy", path, check=False)
    assert result.returncode == EXIT_INVALID
    assert "'gpt' is not a configured provider; use one of: echo, local" in result.stderr


def test_paths_with_brackets_are_printed_as_they_are(env: dict[str, str], tmp_path: Path) -> None:
    path = write_agent(tmp_path / "agents[v2]", "agent[1].yaml", "name: X\n")
    result = run_cli(env, "agents", "deploy", path, check=False)
    assert result.returncode == EXIT_INVALID
    assert str(path) in result.stderr
    good = write_agent(tmp_path / "agents[v2]", "good[2].yaml", "name: Y\nprompt: Hi\n")
    deployed = run_cli(env, "agents", "deploy", good).stdout
    assert str(good) in deployed


def test_no_agent_file_found(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(env, "agents", "deploy", empty, check=False)
    assert result.returncode == EXIT_INVALID
    assert "no *.yaml or *.yml agent file found" in result.stderr


def test_serve_refuses_an_invalid_agent_without_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = write_agent(tmp_path, "bad.yaml", BAD_AGENT)
    process = ListeningProcess(
        [sys.executable, "-m", "copydesk", "serve", "--port", "0", "--agents", str(bad)],
        env,
        LISTENING,
    )
    with pytest.raises(pytest.fail.Exception) as caught:
        process.start(timeout_s=60)
    report = str(caught.value)
    assert f"(exit code {EXIT_INVALID})" in report
    assert str(bad) in report
    assert "field 'prompt' is required: add it" in report
    assert "Traceback" not in report


# --- agents deploy: ids and versions ------------------------------------------------------


def test_a_file_without_an_id_gets_one_written_back(env: dict[str, str], tmp_path: Path) -> None:
    original = "name: Tagline writer\nprompt: Write a tagline.\n"
    path = write_agent(tmp_path, "tagline.yaml", original)
    first = run_cli(env, "agents", "deploy", path).stdout
    written = path.read_text(encoding="utf-8")
    head, _, rest = written.partition("\n")
    assert rest == original  # the rest of the file is untouched
    agent_id = head.removeprefix("id: ")
    assert uuid.UUID(agent_id)
    assert yaml.safe_load(written)["id"] == agent_id
    assert f"deployed {agent_id} 'Tagline writer' as version 1 ({path})" in first
    # Deploying again keeps the id and makes a new version.
    second = run_cli(env, "agents", "deploy", path).stdout
    assert f"deployed {agent_id} 'Tagline writer' as version 2" in second
    assert path.read_text(encoding="utf-8") == written
    shown = json.loads(run_cli(env, "agents", "show", agent_id).stdout)
    assert shown["version"] == 2


def test_agents_list_and_show(env: dict[str, str], tmp_path: Path) -> None:
    run_cli(env, "agents", "deploy", EXAMPLES)
    listing = listed_agents(env)
    for agent_id, name in [
        (PRODUCT_ID, "Product description writer"),
        (SOCIAL_ID, "Social post"),
    ]:
        line = next(line for line in listing.splitlines() if agent_id in line)  # full ids
        assert name in line
    shown = json.loads(run_cli(env, "agents", "show", PRODUCT_ID).stdout)
    assert shown["id"] == PRODUCT_ID
    assert shown["name"] == "Product description writer"
    assert shown["status"] == "deployed"
    assert shown["version"] == 1
    assert shown["last_deployed_at"]
    source = yaml.safe_load((EXAMPLES / "product-description.yaml").read_text(encoding="utf-8"))
    definition = shown["definition"]
    assert definition["prompt"] == source["prompt"]
    assert definition["inputs"][0]["options"] == {"min_fields": 1, "max_fields": 10}
    assert definition["parameters"]["max_tokens"] == 200
    # a past version stays readable after a new deploy
    changed = tmp_path / "product.yaml"
    changed.write_text(
        (EXAMPLES / "product-description.yaml")
        .read_text(encoding="utf-8")
        .replace("max_tokens: 200", "max_tokens: 99"),
        encoding="utf-8",
    )
    run_cli(env, "agents", "deploy", changed)
    latest = json.loads(run_cli(env, "agents", "show", PRODUCT_ID).stdout)
    past = json.loads(run_cli(env, "agents", "show", PRODUCT_ID, "--version", "1").stdout)
    assert latest["version"] == 2
    assert latest["definition"]["parameters"]["max_tokens"] == 99
    assert past["version"] == 1
    assert past["definition"]["parameters"]["max_tokens"] == 200


def test_agents_are_per_organisation(env: dict[str, str], tmp_path: Path) -> None:
    run_cli(env, "agents", "deploy", EXAMPLES / "social-post.yaml", "--org", "acme")
    run_cli(env, "agents", "deploy", EXAMPLES / "alt-text.yaml")
    acme = run_cli(env, "agents", "list", "--org", "acme").stdout
    assert SOCIAL_ID in acme
    assert "Alt text writer" not in acme
    assert SOCIAL_ID not in listed_agents(env)
    hidden = run_cli(env, "agents", "show", SOCIAL_ID, check=False)
    assert hidden.returncode == EXIT_NOT_FOUND
    assert SOCIAL_ID in hidden.stderr


def test_show_and_list_report_what_is_missing(env: dict[str, str]) -> None:
    run_cli(env, "agents", "deploy", EXAMPLES / "alt-text.yaml")  # the default org exists
    missing = run_cli(env, "agents", "show", "no-such-agent", check=False)
    assert missing.returncode == EXIT_NOT_FOUND
    assert "application 'no-such-agent' was not found" in missing.stderr
    nobody = run_cli(env, "agents", "list", "--org", "nobody", check=False)
    assert nobody.returncode == EXIT_NOT_FOUND
    assert "organisation 'nobody' was not found" in nobody.stderr


# --- keys ----------------------------------------------------------------------------------


def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    created = [run_cli(env, "keys", "create", "--org", org) for org in ("acme", "acme", "zeta")]
    keys = [c.stdout.strip() for c in created]
    prefixes = []
    for result, key in zip(created, keys, strict=True):
        match = KEY.match(key)
        assert match, result.stdout  # stdout holds the key and nothing else
        prefixes.append(match.group(1))
        assert match.group(1) in result.stderr  # the label goes to stderr
        assert key not in result.stderr
    assert len(set(keys)) == 3

    table = run_cli(env, "keys", "list").stdout
    as_json = run_cli(env, "keys", "list", "--json").stdout
    for key, prefix in zip(keys, prefixes, strict=True):
        secret = key.split("_", 2)[2]
        for listing in (table, as_json):
            assert prefix in listing
            assert key not in listing
            assert secret not in listing
            assert secret[:12] not in listing
    rows = json.loads(as_json)
    assert [(r["prefix"], r["organization"]) for r in rows] == [
        (prefixes[0], "acme"),
        (prefixes[1], "acme"),
        (prefixes[2], "zeta"),
    ]
    assert set(rows[0]) == {"id", "prefix", "name", "organization", "created_at", "revoked_at"}
    only_zeta = json.loads(run_cli(env, "keys", "list", "--org", "zeta", "--json").stdout)
    assert [r["prefix"] for r in only_zeta] == [prefixes[2]]

    # revoke by prefix, then by id
    revoked = run_cli(env, "keys", "revoke", prefixes[0]).stdout
    assert f"revoked key {rows[0]['id']} (prefix {prefixes[0]})" in revoked
    run_cli(env, "keys", "revoke", rows[2]["id"])
    after = {r["prefix"]: r["revoked_at"] for r in json.loads(
        run_cli(env, "keys", "list", "--json").stdout
    )}  # fmt: skip
    assert after[prefixes[0]] is not None
    assert after[prefixes[1]] is None
    assert after[prefixes[2]] is not None
    assert prefixes[0] in run_cli(env, "keys", "list").stdout  # revoked keys stay listed

    unknown = run_cli(env, "keys", "revoke", "000000000000", check=False)
    assert unknown.returncode == EXIT_NOT_FOUND
    assert "000000000000" in unknown.stderr
