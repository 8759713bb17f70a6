"""Object stores by URI scheme: one class per scheme in :data:`STORES`.

A published repository lives under ``<prefix>/``::

    <prefix>/versions/<id>/<model>/...     every file of the repository, written first
    <prefix>/manifests/<id>.json           the files of <id>, written once they are all there
    <prefix>/CURRENT                       "<id>", written last in one PUT: what replicas serve

so a reader that follows CURRENT never sees a half-written repository.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..registry import Registry
from .errors import StorageError

STORES: Registry[type["ObjectStore"]] = Registry("storage scheme", key="scheme")

POINTER = "CURRENT"
VERSIONS = "versions"
MANIFESTS = "manifests"


@dataclass(frozen=True)
class StoreURI:
    """``scheme://[host:port/]bucket/prefix`` split the way tritonserver reads it."""

    text: str
    scheme: str
    bucket: str  # S3/GCS bucket; for Azure "account/container"
    prefix: str  # no leading or trailing '/'; may be empty
    endpoint: str | None = None  # "host:port" of a non-default S3 endpoint

    @classmethod
    def parse(cls, text: str) -> "StoreURI":
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise StorageError(f"{text}: not a storage URI (expected scheme://bucket/prefix)")
        store = STORES.lookup(scheme, error=lambda message: StorageError(f"{text}: {message}"))
        return store.parse_uri(text, rest.strip("/"))

    def join(self, *keys: str) -> str:
        """The object key of ``keys`` under the prefix."""
        return "/".join(part.strip("/") for part in (self.prefix, *keys) if part.strip("/"))


class ObjectStore(ABC):
    """Keys are '/'-separated names under one bucket (container). Every method raises
    :class:`StorageError` with one line: no credentials, no bucket, endpoint unreachable."""

    scheme: ClassVar[str]

    def __init__(self, uri: StoreURI):
        self.uri = uri

    @classmethod
    def parse_uri(cls, text: str, rest: str) -> StoreURI:
        """``bucket/prefix`` (the part after ``scheme://``, stripped of '/')."""
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text}: no bucket (expected {cls.scheme}://bucket/prefix)")
        return StoreURI(text, cls.scheme, bucket, prefix.strip("/"))

    @abstractmethod
    def check(self) -> None:
        """Credentials work and the bucket exists."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (stores whose SDK streams large files in parts override this)."""
        self.put(key, path.read_bytes())

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes; None if there is no such object."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""

    @abstractmethod
    def triton_uri(self, key: str) -> str:
        """How tritonserver's --model-repository names the folder ``key``."""


def open_store(uri: str | StoreURI) -> ObjectStore:
    parsed = uri if isinstance(uri, StoreURI) else StoreURI.parse(uri)
    return STORES[parsed.scheme](parsed)


def is_store_uri(location: str) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def require(module: str, package: str, extra: str, scheme: str):
    """Import an optional SDK, or one line saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise StorageError(f"{scheme}:// repositories need {package}: pip install 'tritongen[{extra}]' "
                           f"(or pip install {package})") from None
