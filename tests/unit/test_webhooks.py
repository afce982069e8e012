"""Standard Webhooks signatures, the retry schedule and the endpoint URL rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

from copydesk.fetching import AddressPolicy
from copydesk.subscriptions import url_refusal
from copydesk.webhooks import DeliveryPolicy, headers, new_secret, sign

# The Standard Webhooks specification's example (its test vectors in the reference
# libraries): this secret, id, timestamp and body sign to this value.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def independent_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, "sha256")
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signature_matches_the_specifications_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert independent_signature(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_of_a_generated_secret_verifies_independently() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_") :])) == 24
    body = b'{"type":"job.completed","data":{"id":"j1"}}'

    sent = headers(secret, "evt-1", 1700000000, body)

    assert sent["webhook-id"] == "evt-1"
    assert sent["webhook-timestamp"] == "1700000000"
    expected = independent_signature(secret, "evt-1", 1700000000, body)
    assert hmac.compare_digest(sent["webhook-signature"], expected)
    key = base64.b64decode(secret[6:])
    digest = hmac.new(key, b"evt-1.1700000000." + body, hashlib.sha256).digest()
    assert sent["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_backoff_follows_the_schedule_with_jitter_and_repeats_the_last() -> None:
    policy = DeliveryPolicy(backoff_s=(5.0, 30.0, 120.0), max_attempts=8, jitter=0.2)
    rng = random.Random(7)
    for attempt, base in [(1, 5.0), (2, 30.0), (3, 120.0), (4, 120.0), (9, 120.0)]:
        for _ in range(50):
            assert base * 0.8 <= policy.delay(attempt, rng) <= base * 1.2
    assert DeliveryPolicy(backoff_s=(0.2,), jitter=0).delay(3) == 0.2


def test_endpoint_urls_refuse_bad_schemes_and_private_literals_unless_allowed() -> None:
    closed = AddressPolicy([])
    assert url_refusal(closed, "https://hooks.example.com/in") is None
    assert url_refusal(closed, "ftp://hooks.example.com/in") == "must be an http:// or https:// URL"
    assert "private or reserved address (127.0.0.1)" in (
        url_refusal(closed, "http://127.0.0.1:9000/in") or ""
    )
    assert "10.1.2.3" in (url_refusal(closed, "http://10.1.2.3/in") or "")
    assert "[::1]" not in (url_refusal(closed, "http://[::1]:80/in") or "x")
    assert url_refusal(closed, "http://[::1]:80/in") is not None
    assert "loopback host (localhost)" in (url_refusal(closed, "http://localhost:80/") or "")
    assert url_refusal(closed, "https://" + "a" * 2000 + ".com") is not None

    opened = AddressPolicy(["127.0.0.1", "localhost", "10.0.0.0/8"])
    assert url_refusal(opened, "http://127.0.0.1:9000/in") is None
    assert url_refusal(opened, "http://10.1.2.3/in") is None
    assert url_refusal(opened, "http://localhost:80/") is None
    assert url_refusal(opened, "http://192.168.1.1/") is not None
