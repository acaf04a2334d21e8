"""A real S3 HTTP endpoint on loopback for the tests: moto's server mode (ThreadedMotoServer).

boto3 talks to it over HTTP exactly as it talks to AWS or MinIO: requests are signed (SigV4), objects
are stored, presigned URLs are checked. Credentials are moto's dummy ones, set in the environment
for the session (boto3's standard chain reads them, as it would read real ones).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

import pytest

from tests import needs
from tests.processes import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1, for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto is in the test extras
        needs.need(f"moto's server mode is not installed ({exc}); `make install` brings it")
        raise
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)


def age_s3_object(bucket: str, object_key: str, seconds: float) -> None:
    """Make an object `seconds` older: its LastModified moved back in the moto server's store (S3 sets
    it on write, so no request can), which this process holds since the server runs in a thread."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    item = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys[object_key]
    item.last_modified -= datetime.timedelta(seconds=seconds)
