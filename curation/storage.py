"""One small interface over local paths and ``s3://`` URIs. Only this module touches disk or S3.

S3 goes through boto3 with its usual settings: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an
S3-compatible server, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / profiles for credentials and
``AWS_DEFAULT_REGION`` / ``AWS_REGION`` for the region.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class StorageError(Exception):
    """Base class; ``error_class`` is what lands in ``item_errors.error_class``."""

    error_class = "storage_error"


class MissingObject(StorageError):
    error_class = "missing_input"


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


_s3_client = None


def s3_client():
    """A process-wide boto3 client (boto3 clients are thread-safe)."""
    global _s3_client
    if _s3_client is None:
        import boto3
        from botocore.config import Config

        # a session of its own: credentials are resolved again after reset_s3_client (boto3's default
        # session caches the first ones it found)
        _s3_client = boto3.session.Session().client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(retries={"max_attempts": 5, "mode": "adaptive"}, connect_timeout=10, read_timeout=60),
        )
    return _s3_client


def reset_s3_client() -> None:
    """Forget the cached client (after the S3 settings in the environment changed)."""
    global _s3_client
    _s3_client = None


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
                raise MissingObject(f"{uri}: no such object") from exc
            if code in ("AccessDenied", "403"):
                raise MissingObject(f"{uri}: access denied") from exc
            raise StorageError(f"{uri}: {code or exc}") from exc
    path = _local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise MissingObject(f"{uri}: no such file") from exc
    except IsADirectoryError as exc:
        raise MissingObject(f"{uri}: is a directory") from exc
    except PermissionError as exc:
        raise MissingObject(f"{uri}: permission denied") from exc


def local_file(uri: str, scratch: Path) -> Path:
    """A local path holding the object, for readers that need a file (video demuxers seek): the file
    itself for a local URI, a download into the ``scratch`` folder for ``s3://``."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        scratch.mkdir(parents=True, exist_ok=True)
        dest = scratch / f"{abs(hash(uri)):x}-{Path(key).name}"
        try:
            s3_client().download_file(bucket, key, str(dest))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket", "AccessDenied", "403"):
                raise MissingObject(f"{uri}: no such object ({code})") from exc
            raise StorageError(f"{uri}: {code or exc}") from exc
        return dest
    path = _local_path(uri)
    if not path.is_file():
        raise MissingObject(f"{uri}: no such file")
    return path


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)  # readers never see half a file


def list_objects(prefix: str) -> Iterator[ObjectInfo]:
    """Every object under a folder or ``s3://`` prefix, in a stable (sorted) order."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    yield ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]))
        return
    root = _local_path(prefix)
    if not root.is_dir():
        raise MissingObject(f"{prefix}: not a folder")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield ObjectInfo(str(path.resolve()), path.stat().st_size)


def delete(uri: str) -> None:
    """Remove one object or file (no error if it is already gone)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    _local_path(uri).unlink(missing_ok=True)


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            if key == "":
                s3_client().head_bucket(Bucket=bucket)
            else:
                s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError:
            return False
    return _local_path(uri).exists()


def prefix_problem(uri: str) -> str | None:
    """Why a folder or S3 prefix cannot be listed (missing credentials, no such bucket, access denied,
    endpoint unreachable, not a folder), or None when it can."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        bucket, key = _split_s3(uri)
        try:
            s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            return (f"no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "(or a profile), and AWS_ENDPOINT_URL for an S3-compatible server")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                return f"bucket {bucket!r} does not exist"
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return f"access to bucket {bucket!r} denied ({code}): check the S3 credentials"
            return f"S3 error {code or exc.__class__.__name__}: {exc}"
        except BotoCoreError as exc:
            return f"S3 endpoint unreachable: {exc}"
    path = _local_path(uri)
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "folder not readable"
    return None


def prefix_reachable(uri: str) -> bool:
    """Whether a folder or S3 prefix can be listed at all (its bucket exists and we may list it)."""
    return prefix_problem(uri) is None


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(_local_path(base).joinpath(*parts))
