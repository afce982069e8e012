"""API keys: issued once, found by prefix, stored and checked as a hash."""

from __future__ import annotations

import hashlib
import re

import pytest

from copydesk.keys import KEY_SCHEME, hash_key, issue_key, matches, prefix_of

KEY_RE = re.compile(r"^cd_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def test_issue_key_shape() -> None:
    issued = issue_key()

    assert KEY_RE.match(issued.plaintext), issued.plaintext
    assert issued.plaintext.startswith(f"{KEY_SCHEME}_{issued.prefix}_")
    assert len(issued.prefix) == 12


def test_issued_keys_are_unique() -> None:
    keys = [issue_key() for _ in range(50)]

    assert len({k.plaintext for k in keys}) == 50
    assert len({k.prefix for k in keys}) == 50


def test_the_stored_hash_is_not_the_key() -> None:
    issued = issue_key()
    secret = issued.plaintext.split("_", 2)[2]

    assert issued.secret_hash == hashlib.sha256(issued.plaintext.encode()).hexdigest()
    assert issued.secret_hash == hash_key(issued.plaintext)
    assert issued.plaintext not in issued.secret_hash
    assert secret not in issued.secret_hash
    assert re.fullmatch(r"[0-9a-f]{64}", issued.secret_hash)


def test_prefix_of_an_issued_key() -> None:
    issued = issue_key()

    assert prefix_of(issued.plaintext) == issued.prefix


def test_prefix_of_keeps_underscores_in_the_secret() -> None:
    assert prefix_of("cd_0123456789ab_se_cr_et") == "0123456789ab"


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "cd",
        "cd_0123456789ab",
        "xx_0123456789ab_secret",
        "CD_0123456789ab_secret",
        "cd_0123456789a_secret",
        "cd_0123456789abc_secret",
        "Bearer cd_0123456789ab_secret",
        "sk-0123456789abcdef",
    ],
)
def test_prefix_of_refuses_what_is_not_one_of_our_keys(presented: str) -> None:
    assert prefix_of(presented) is None


def test_matches_its_own_hash() -> None:
    issued = issue_key()

    assert matches(issued.plaintext, issued.secret_hash)


def test_a_wrong_key_does_not_match() -> None:
    issued = issue_key()
    other = issue_key()
    tampered = issued.plaintext[:-1] + ("A" if issued.plaintext[-1] != "A" else "B")

    assert not matches(other.plaintext, issued.secret_hash)
    assert not matches(tampered, issued.secret_hash)
    assert not matches(issued.plaintext + "x", issued.secret_hash)
    assert not matches("", issued.secret_hash)
    # The hash itself is not a key that opens anything.
    assert not matches(issued.secret_hash, issued.secret_hash)
