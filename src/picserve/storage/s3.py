"""Result images in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, …), for fleets.

`PICSERVE_STORAGE=s3://bucket/prefix` puts every result and task input under `prefix/` in `bucket`,
so a worker on any machine writes results that any API node can hand out. Endpoint, region and
credentials come from the standard AWS variables and files (boto3's chain: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles, instance roles); `PICSERVE_S3_ENDPOINT_URL` points at
a non-AWS server.

- A result's URL in `ImgList` is a presigned GET of its object, valid for what is left of the result
  TTL: clients download straight from the object store, API nodes serve no bytes. The URL stops
  working when the TTL is over, as PICPIK's do after 24 h.
- Expiry: `expire()` (run by the API's cleanup loop) deletes results older than the TTL; a bucket
  lifecycle rule on `prefix/` with the TTL in days does the same without it (docs/deploy.md).
- Inputs (`.ref`) are never expired by age; they go with their task.
- Keys are 192-bit random tokens, as on disk; an object is written whole by one PUT, so a key is there
  complete or not at all.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from picserve import errors

__all__ = ["S3Location", "S3Store"]

_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(png|ref)$")
_CONTENT_TYPES = {".png": "image/png", ".ref": "application/octet-stream"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://bucket/some/prefix` → bucket and prefix (without slashes at its ends)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


class S3Store:
    """The `Store` protocol on an S3 bucket; a result's age is its object's LastModified."""

    def __init__(
        self,
        location: S3Location,
        ttl_seconds: int,
        client: Any = None,
        endpoint_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location = location
        self.ttl = ttl_seconds
        #: an age offset for tests: "now" is clock(), compared with the objects' LastModified
        self.clock = clock
        if client is None:
            import boto3  # imported here: only S3 deployments pay for it
            from botocore.config import Config

            config = Config(
                signature_version="s3v4",  # presigned URLs too (boto3's default for them is SigV2)
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=30,
            )
            client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client
        #: key → LastModified of the results whose URL was made (bounded; oldest first out)
        self._when: dict[str, Any] = {}

    def put(self, data: bytes, suffix: str = ".png") -> str:
        key = secrets.token_urlsafe(24) + suffix
        try:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.location.object_key(key),
                Body=data,
                ContentType=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
            )
        except Exception as exc:  # botocore's ClientError, connection and credential errors
            raise errors.StorageError(
                f"the result images could not be stored in s3://{self.location.bucket}/{self.location.prefix} "
                f"({_reason(exc)}); the operator should check the bucket, its credentials and its endpoint; "
                "then submit the task again"
            ) from exc
        return key

    def get(self, key: str) -> bytes | None:
        if not _KEY.match(key):
            return None
        try:
            reply = self.client.get_object(Bucket=self.location.bucket, Key=self.location.object_key(key))
        except Exception:  # NoSuchKey, and any failure to reach the bucket: not found for the caller
            return None
        if key.endswith(".png") and self._age(reply["LastModified"]) >= self.ttl:
            return None
        data: bytes = reply["Body"].read()
        return data

    def delete(self, key: str) -> bool:
        if not _KEY.match(key):
            return False
        object_key = self.location.object_key(key)
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=object_key)
            self.client.delete_object(Bucket=self.location.bucket, Key=object_key)
        except Exception:
            return False
        return True

    def url(self, key: str, base_url: str) -> str:
        """A presigned GET that expires when the result does (TTL after it was written)."""
        left = self.ttl - self._age(self._written(key)) if key.endswith(".png") else self.ttl
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": self.location.object_key(key)},
            ExpiresIn=max(1, int(left)),
        )
        return url

    def _written(self, key: str) -> Any:
        """When `key` was written (its LastModified), remembered: clients poll the same URLs."""
        written = self._when.get(key)
        if written is None:
            try:
                head = self.client.head_object(Bucket=self.location.bucket, Key=self.location.object_key(key))
                written = head["LastModified"]
            except Exception:  # gone or unreachable: a URL valid for the whole TTL, which S3 will refuse
                return _Now(self.clock())
            if len(self._when) >= 10_000:
                self._when.pop(next(iter(self._when)))
            self._when[key] = written
        return written

    def expire(self) -> int:
        """Delete the results older than the TTL (never a `.ref` input); how many."""
        prefix = self.location.object_key("")
        expired: list[dict[str, str]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                if item["Key"].endswith(".png") and self._age(item["LastModified"]) >= self.ttl:
                    expired.append({"Key": item["Key"]})
        for start in range(0, len(expired), 1000):  # DeleteObjects takes 1000 keys at most
            self.client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": expired[start : start + 1000]})
        return len(expired)

    def _age(self, last_modified: Any) -> float:
        return self.clock() - float(last_modified.timestamp())


@dataclass(frozen=True)
class _Now:
    """A LastModified stand-in at `at` (seconds since the epoch)."""

    at: float

    def timestamp(self) -> float:
        return self.at


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return f"{type(exc).__name__}: {exc}"
