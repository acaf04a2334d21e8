"""open_store: the `Store` that `settings` name (`PICSERVE_STORAGE`), for the API and the workers alike."""

from __future__ import annotations

from picserve.config import Settings
from picserve.storage.base import Store
from picserve.storage.disk import DiskStore

__all__ = ["open_store"]


def open_store(settings: Settings) -> Store:
    """`s3://bucket/prefix` → an S3Store (endpoint from `PICSERVE_S3_ENDPOINT_URL`, credentials and region
    from the standard AWS variables); unset or `disk` → the data folder's results/."""
    target = (settings.storage or "disk").strip()
    if target == "disk":
        return DiskStore(settings.results_dir, settings.result_ttl_seconds)
    if target.startswith("s3://"):
        from picserve.storage.s3 import S3Location, S3Store

        return S3Store(S3Location.parse(target), settings.result_ttl_seconds, endpoint_url=settings.s3_endpoint_url)
    raise ValueError(f"PICSERVE_STORAGE must be 'disk' or s3://bucket/prefix (got {target!r})")
