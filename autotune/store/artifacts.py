"""Where the trial images live: one location string, a folder or ``s3://bucket/prefix``, that the study
records when it is created, so that every worker writes to it and every reader (report, dashboard,
grid) reads from it, whichever machine it runs on.

A folder is Optuna's ``FileSystemArtifactStore`` (workers on one machine, or a shared file system); a
bucket is Optuna's ``Boto3ArtifactStore`` with keys under the prefix, for any S3-compatible store:
boto3 takes the endpoint and credentials from the usual AWS settings (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``~/.aws/config``, an instance role). Needs ``pip install autotune[s3]``.

Example:
    >>> store = open_store("s3://team-bucket/autotune/night")
    >>> check(cfg.artifacts, "storage.artifacts")  # one line, before any trial renders, if unreachable
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from autotune.config import ConfigError, StudyConfig

__all__ = ["check", "is_bucket", "open_store", "reader_store", "split"]


def is_bucket(location: str) -> bool:
    return location.startswith("s3://")


def split(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (an empty prefix: the bucket's root)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, (prefix.strip("/") + "/") if prefix.strip("/") else ""


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError("storage.artifacts: an s3:// location needs boto3: pip install 'autotune[s3]'") from None
    # a store that does not answer fails in seconds, not after botocore's minutes of retries
    return boto3.client("s3", config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))


class _BucketStore:
    """Optuna's ``Boto3ArtifactStore``, every key under ``prefix``."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from optuna.artifacts import Boto3ArtifactStore

        self.prefix, self.inner = prefix, Boto3ArtifactStore(bucket, client=_client())

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


def open_store(location: str) -> Any:
    """The artifact store of ``location`` (an Optuna ``ArtifactStore``)."""
    if is_bucket(location):
        return _BucketStore(*split(location))
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(location)


def reader_store(cfg: StudyConfig, stored: Iterable[str | None]) -> Any:
    """The store a reader (report, dashboard) finds the images in, or None (a folder that does not exist):
    where the study file or ``--artifacts`` says, else where the classes' studies recorded their workers
    wrote them (``stored``: each one's record's ``artifacts``)."""
    location = cfg.artifacts
    recorded = next((str(a) for a in stored if a), None)
    if not cfg.storage.artifacts and recorded and (is_bucket(recorded) or not Path(location).is_dir()):
        location = recorded  # a bucket, or the folder the workers wrote (this project's own may have moved)
    return open_store(location) if is_bucket(location) or Path(location).is_dir() else None


def check(location: str, where: str) -> None:
    """Refuse, in one line naming ``where``, a bucket that cannot be written and read back: an unknown
    bucket, an endpoint that does not answer, missing credentials; or a folder that cannot be made or
    written (a file in its place, a read-only parent). A folder is made at the first image (a refused
    run leaves none behind)."""
    if not is_bucket(location):
        path = Path(location)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{where}: {location} is a file; expected a folder (or s3://) for the trial images")
        first = next(p for p in (path, *path.parents) if p.exists())
        if not first.is_dir() or not os.access(first, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: cannot write trial images to {location} ({first} is not a writable folder)")
        return
    bucket, prefix = split(location)
    if not bucket:
        raise ConfigError(f"{where}: expected s3://bucket/prefix, got {location!r}")
    try:
        store = _BucketStore(bucket, prefix)
        store.write(".autotune-check", io.BytesIO(b"ok"))
        with store.open_reader(".autotune-check") as f:
            f.read()
    except ConfigError:
        raise
    except Exception as e:  # botocore's errors: no credentials, no such bucket, endpoint unreachable, ...
        text = " ".join(str(e).split())
        raise ConfigError(f"{where}: cannot write trial images to {location} ({type(e).__name__}: {text})") from None
