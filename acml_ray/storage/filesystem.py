"""Resolve a local path or an ``s3://`` URI to a pyarrow filesystem and a path inside it.

S3 credentials come from the standard boto3 chain (environment, shared config, instance
role); an S3-compatible endpoint (SeaweedFS, MinIO, Ceph) is set with ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``. Credentials are never put into URIs, configs or error messages.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A storage location that cannot be used (names the location, never the credentials)."""


def _s3_filesystem() -> pafs.S3FileSystem:
    import boto3

    session = boto3.Session()
    creds = session.get_credentials()
    kwargs: dict = {"region": session.region_name or os.environ.get("AWS_REGION", "us-east-1")}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                      session_token=frozen.token)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    # Fail fast instead of retrying for minutes against a wrong endpoint or bad keys.
    kwargs["connect_timeout"] = 5
    kwargs["request_timeout"] = 30
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    return pafs.S3FileSystem(**kwargs)


def resolve_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or an ``s3://bucket/key`` URI."""
    if location.startswith("s3://"):
        return _s3_filesystem(), location[len("s3://"):].rstrip("/")
    if "://" in location and not location.startswith("file://"):
        raise StorageError(f"unsupported storage scheme in {location!r} (use a path or s3://)")
    path = location[len("file://"):] if location.startswith("file://") else location
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(location: str, *parts: str) -> str:
    """Join path segments onto a local path or URI with '/'."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])
