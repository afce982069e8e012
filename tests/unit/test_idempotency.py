"""Idempotency keys, the pure part: which keys are accepted, what a fingerprint covers."""

from __future__ import annotations

import pytest

from copydesk.errors import InvalidRequest
from copydesk.idempotency import check_key, fingerprint


def test_keys_are_checked_and_fingerprints_ignore_parameter_order() -> None:
    assert check_key("a" * 255) == "a" * 255
    for bad in ("", "a" * 256, "tab\there", "naïve"):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            check_key(bad)
    assert fingerprint("post", "/v1/x", "b=2&a=1", "h") == fingerprint(
        "POST", "/v1/x", "a=1&b=2", "h"
    )
    assert fingerprint("POST", "/v1/x", "", "h") != fingerprint("POST", "/v1/y", "", "h")
    assert fingerprint("POST", "/v1/x", "", "h", "a.txt") != fingerprint(
        "POST", "/v1/x", "", "h", "b.txt"
    )
