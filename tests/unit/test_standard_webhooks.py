"""The Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature) checked against the
reference library `standardwebhooks`, and `signing.verify_standard` against it; the deprecated
X-Picserve-* headers still sent beside them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from picserve.webhooks import signing

PRIVATE_KEY = "a-private-key-of-some-client"
BODY = json.dumps({"TaskUID": "t-1", "Status": "Finished", "Event": "completed"}, separators=(",", ":")).encode()


def sent(timestamp: int | None = None, private_key: str = PRIVATE_KEY, body: bytes = BODY) -> dict[str, str]:
    return signing.headers(private_key, "completed", "d-0123456789", body, timestamp=timestamp)


def test_the_secret_is_whsec_and_the_base64_of_a_key_derived_from_the_private_key():
    secret = signing.standard_secret(PRIVATE_KEY)
    derived = hmac.new(PRIVATE_KEY.encode(), b"picserve webhook secret v1", hashlib.sha256).digest()
    assert secret == "whsec_" + base64.b64encode(derived).decode()  # standard base64, padded
    assert len(secret) == len("whsec_") + 44 and secret.endswith("=")
    assert secret == signing.standard_secret(PRIVATE_KEY) != signing.standard_secret(PRIVATE_KEY + "x")
    # one way: the secret does not hold the private key, which signs API requests
    assert PRIVATE_KEY.encode() not in base64.b64decode(secret.removeprefix("whsec_"))


def test_a_delivery_verifies_with_the_reference_library():
    headers = sent()
    assert Webhook(signing.standard_secret(PRIVATE_KEY)).verify(BODY, headers) == json.loads(BODY)
    # the header names as HTTP carries them (any case), the body as a str too
    upper = {name.upper(): value for name, value in headers.items()}
    assert Webhook(signing.standard_secret(PRIVATE_KEY)).verify(BODY.decode(), upper)["Event"] == "completed"


def test_the_signature_is_the_reference_librarys():
    stamp = 1_700_000_000
    headers = sent(stamp)
    secret = signing.standard_secret(PRIVATE_KEY)
    theirs = Webhook(secret).sign("d-0123456789", datetime.fromtimestamp(stamp, tz=UTC), BODY)
    assert headers["webhook-signature"] == theirs
    assert (headers["webhook-id"], headers["webhook-timestamp"]) == ("d-0123456789", "1700000000")
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]


@pytest.mark.parametrize(
    ("secret", "body", "change", "error"),
    [
        (signing.standard_secret("another-key"), BODY, {}, "No matching signature found"),
        # the private key itself, base64 encoded, is not the secret
        ("whsec_" + base64.b64encode(PRIVATE_KEY.encode()).decode(), BODY, {}, "No matching signature found"),
        (signing.standard_secret(PRIVATE_KEY), BODY + b" ", {}, "No matching signature found"),
        (signing.standard_secret(PRIVATE_KEY), BODY.replace(b"Finished", b"Canceled"), {}, "No matching"),
        (signing.standard_secret(PRIVATE_KEY), BODY, {"webhook-id": "d-other"}, "No matching signature found"),
        (signing.standard_secret(PRIVATE_KEY), BODY, {"webhook-signature": None}, "Missing required headers"),
    ],
    ids=["wrong-secret", "private-key-as-secret", "body-appended", "body-changed", "other-id", "unsigned"],
)
def test_the_reference_library_refuses_a_wrong_secret_or_a_tampered_delivery(secret, body, change, error):
    headers = {**sent(), **change}
    headers = {name: value for name, value in headers.items() if value is not None}
    with pytest.raises(WebhookVerificationError, match=error):
        Webhook(secret).verify(body, headers)
    assert not signing.verify_standard(secret, headers, body)


@pytest.mark.parametrize(("age", "error"), [(301, "too old"), (-301, "too new")])
def test_an_old_or_future_timestamp_is_refused(age, error):
    headers = sent(int(time.time()) - age)
    secret = signing.standard_secret(PRIVATE_KEY)
    with pytest.raises(WebhookVerificationError, match=f"Message timestamp {error}"):
        Webhook(secret).verify(BODY, headers)
    assert not signing.verify_standard(secret, headers, BODY)
    assert signing.verify_standard(secret, headers, BODY, tolerance=abs(age) + 60)


def test_verify_standard_takes_what_the_reference_library_signs():
    secret = signing.standard_secret(PRIVATE_KEY)
    stamp = 1_700_000_000
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(stamp, tz=UTC), BODY)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(stamp), "Webhook-Signature": theirs}
    assert signing.verify_standard(secret, headers, BODY, now=stamp + 300)
    assert signing.verify_standard(secret.removeprefix("whsec_") + "\n", headers, BODY, now=stamp)
    assert not signing.verify_standard(secret, headers, BODY, now=stamp + 301)
    # several signatures, space-separated (a secret being rotated): one match is enough, for both
    several = sent()
    several["webhook-signature"] = f"v1,{base64.b64encode(b'x' * 32).decode()} {several['webhook-signature']}"
    assert Webhook(secret).verify(BODY, several) and signing.verify_standard(secret, several, BODY)
    # anything else is refused, never raised
    for broken in (
        {**headers, "Webhook-Timestamp": "soon"},
        {**headers, "Webhook-Signature": "v1,é"},
        {**headers, "Webhook-Id": ""},
        {k: v for k, v in headers.items() if k != "Webhook-Signature"},
    ):
        assert not signing.verify_standard(secret, broken, BODY, now=stamp)
    for bad_secret in ("whsec_", "whsec_not base64!", ""):
        assert not signing.verify_standard(bad_secret, headers, BODY, now=stamp)


def test_the_deprecated_headers_are_still_sent_and_valid():
    headers = sent(1_700_000_000)
    assert headers["X-Picserve-Delivery"] == headers["webhook-id"]
    assert headers["X-Picserve-Timestamp"] == headers["webhook-timestamp"]
    assert headers["X-Picserve-Event"] == "completed"
    assert signing.verify(PRIVATE_KEY, "1700000000", BODY, headers["X-Picserve-Signature"], now=1_700_000_000)
    assert not signing.verify(PRIVATE_KEY, "1700000000", BODY, "sha256=é", now=1_700_000_000)  # refused, not raised
