"""Where data, caches, checkpoints and artifacts live: local paths or object storage URIs."""

from acml_ray.storage.filesystem import (
    StorageError,
    check_access,
    download,
    join,
    resolve_filesystem,
    s3_endpoint,
    storage_lost,
)
from acml_ray.storage.packages import package_dir

__all__ = [
    "StorageError",
    "check_access",
    "download",
    "join",
    "package_dir",
    "resolve_filesystem",
    "s3_endpoint",
    "storage_lost",
]
