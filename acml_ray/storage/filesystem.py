"""Resolve a local path or an ``s3://`` URI to a pyarrow filesystem and a path inside it.

S3 credentials come from the standard AWS chain (environment, shared config, credential
process, web identity, container or instance role); an S3-compatible endpoint (SeaweedFS,
MinIO, Ceph) is set with ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``. Credentials are never
put into URIs, configs or error messages.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A storage location that cannot be used (names the location, never the credentials)."""


def s3_endpoint() -> str:
    """The S3 endpoint requests go to, for messages: the configured URL, or AWS's own."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return f"https://s3.{region}.amazonaws.com (AWS default; set AWS_ENDPOINT_URL_S3 for another)"


def _s3_filesystem() -> pafs.S3FileSystem:
    import boto3
    from botocore.credentials import RefreshableCredentials

    session = boto3.Session()
    creds = session.get_credentials()
    kwargs: dict = {"region": session.region_name or os.environ.get("AWS_REGION", "us-east-1")}
    # Static keys (environment, credentials file) are handed over as they are. Expiring ones
    # (instance or container role, web identity, SSO, a credential process) are not: frozen,
    # they would die with their token in the middle of a long job, and they would travel inside
    # every pickled filesystem. pyarrow's own AWS chain then finds and refreshes them, on each
    # node for itself.
    if creds is not None and not isinstance(creds, RefreshableCredentials):
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
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
        return _s3_filesystem(), location[len("s3://") :].rstrip("/")
    if "://" in location and not location.startswith("file://"):
        raise StorageError(f"unsupported storage scheme in {location!r} (use a path or s3://)")
    path = location[len("file://") :] if location.startswith("file://") else location
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _s3_reason(exc: BaseException) -> str:
    """Short cause of a pyarrow S3 error (its messages name the operation, not the secret)."""
    text = str(exc)
    for marker, reason in (
        ("ACCESS_DENIED", "access denied"),
        ("SIGNATURE_DOES_NOT_MATCH", "access denied (signature mismatch: wrong secret key?)"),
        ("INVALID_ACCESS_KEY_ID", "unknown access key id"),
        ("NO_SUCH_BUCKET", "no such bucket"),
        ("NETWORK_CONNECTION", "cannot connect to the endpoint"),
    ):
        if marker in text:
            return reason
    return text.split("\n")[0][:200]


def check_access(location: str, write: bool = False) -> tuple[pafs.FileSystem, str]:
    """Resolve `location` and prove it is usable now, before any distributed work starts.

    Reads (and with `write`, writes and deletes a probe object) once with the bounded
    timeouts of `resolve_filesystem`, so bad credentials or a wrong endpoint fail in seconds
    with a `StorageError` that names the bucket and never echoes a credential.
    """
    fs, path = resolve_filesystem(location)
    if not isinstance(fs, pafs.S3FileSystem):
        return fs, path
    bucket = path.split("/", 1)[0]
    try:
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        if write:
            probe = f"{path}/.acml-write-probe-{os.getpid()}"
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            fs.delete_file(probe)
    except OSError as exc:
        raise StorageError(
            _scrub(
                f"cannot {'write to' if write else 'read from'} bucket {bucket!r} ({location}) at endpoint "
                f"{s3_endpoint()}: {_s3_reason(exc)}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"(or the AWS profile) and AWS_ENDPOINT_URL_S3"
            )
        ) from None
    return fs, path


def _scrub(message: str) -> str:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret:  # belt and braces: a credential must never reach a log or a terminal
        message = message.replace(secret, "***")
    return message


# pyarrow names the object in its S3 errors: "When reading information for key 'k' in bucket 'b'".
_S3_OBJECT = re.compile(r"key '([^']*)' in bucket '([^']*)'")
_S3_LOST = (
    "NETWORK_CONNECTION",
    "curlCode",
    "Couldn't connect",
    "Connection refused",
    "timed out",
    "Timeout was reached",
    "Connection reset",
    "connection was closed",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes/contexts and (Ray) `cause` attributes, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # Ray's RayTaskError keeps the worker's exception in `cause`; anything else there is no link.
        cause = getattr(current, "cause", None)
        todo += [cause if isinstance(cause, BaseException) else None, current.__cause__, current.__context__]


def storage_lost(exc: BaseException, doing: str, partial: str) -> StorageError | None:
    """A one-line `StorageError` when `exc` (anywhere in its chain) is an S3 endpoint that stopped
    answering, else None.

    The message names the endpoint, and the bucket and key pyarrow reported; `doing` says what
    was under way and `partial` what was already written (e.g. ``"nothing was written"``).
    """
    for error in _chain(exc):
        text = str(error)
        if not any(marker in text for marker in _S3_LOST):
            continue
        match = _S3_OBJECT.search(text)
        where = f"bucket {match.group(2)!r}, key {match.group(1)!r}" if match else "an object"
        return StorageError(
            _scrub(
                f"storage lost while {doing}: endpoint {s3_endpoint()} stopped answering "
                f"({where}: {_s3_reason(error)}); {partial}"
            )
        )
    return None


def join(location: str, *parts: str) -> str:
    """Join path segments onto a local path or URI with '/'."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def download(location: str, target: str | Path) -> Path:
    """Replace the local folder `target` with a copy of the folder at `location` (path or s3://)."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    fs, path = resolve_filesystem(location)
    pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target
