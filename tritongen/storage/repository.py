"""Publish a model repository to an object store, and find what a store serves.

``publish`` uploads every file of every model under ``<prefix>/versions/<id>/`` (id = UTC time +
content hash), then the manifest, then the pointer ``<prefix>/CURRENT`` in one PUT, last: a
publish interrupted at any point leaves CURRENT naming the previous, complete version.
``open_repository`` turns a local path or a URI into what tritonserver is given, with the
models' configs read from where they are stored."""
from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..emit.pbtxt import parse_config, read_configs
from ..errors import EmitError
from .base import MANIFESTS, POINTER, VERSIONS, ObjectStore, is_store_uri, open_store
from .errors import StorageError

HASH_CHARS = 12


@dataclass(frozen=True)
class RepositoryFile:
    path: Path
    relative: str  # "<model>/..." with '/' separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Published:
    """One publication: what was uploaded, and the URI tritonserver reads."""

    uri: str
    version: str
    triton_uri: str
    files: int
    bytes: int
    reused: bool  # identical content was already published under ``version``: nothing uploaded


def repository_files(repository: Path) -> list[RepositoryFile]:
    """The files of every model of a local repository (sorted); StorageError if it is not one.
    Models are the directories with a config.pbtxt that parses; '.'-directories (a build's
    staging) and files beside the models are not published."""
    repository = Path(repository)
    if not repository.is_dir():
        raise StorageError(f"{repository}: no such directory (expected a model repository)")
    try:
        models = list(read_configs(repository))
    except EmitError as exc:
        raise StorageError(f"{repository}: not a valid model repository: {exc}") from None
    if not models:
        raise StorageError(f"{repository}: not a model repository (no <model>/config.pbtxt in it)")
    files = []
    for model in models:
        for path in sorted(p for p in (repository / model).rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files.append(RepositoryFile(path, path.relative_to(repository).as_posix(), path.stat().st_size, digest))
    return files


def content_hash(files: list[RepositoryFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative}\0{f.sha256}\n".encode())
    return digest.hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class Upload:
    """A repository checked and a store reachable: what :func:`upload` needs."""

    repository: Path
    uri: str
    files: list[RepositoryFile]
    store: ObjectStore = field(repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def prepare(repository: Path, uri: str) -> Upload:
    """Check ``repository`` is a model repository and ``uri``'s bucket exists (credentials work)."""
    files = repository_files(repository)
    store = open_store(uri)
    store.check()
    return Upload(Path(repository), uri, files, store)


def upload(plan: Upload, on_upload: Callable[[str, int], None] | None = None,
           before_pointer: Callable[[str], None] | None = None) -> Published:
    """Upload the files, then the manifest, then point ``<prefix>/CURRENT`` at them (last).

    ``on_upload(relative_path, size)`` after each file; ``before_pointer(version)`` right before
    the pointer is written (an interruption there leaves the previous version current)."""
    store, files = plan.store, plan.files
    digest = content_hash(files)
    version = _complete_version(store, digest)
    reused = version is not None
    if version is None:
        version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest}"
        for f in files:
            store.put_file(store.uri.join(VERSIONS, version, f.relative), f.path)
            if on_upload:
                on_upload(f.relative, f.size)
        manifest = {"version": version, "content_hash": digest,
                    "files": {f.relative: {"size": f.size, "sha256": f.sha256} for f in files}}
        store.put(store.uri.join(MANIFESTS, f"{version}.json"), json.dumps(manifest, indent=1).encode())
    if before_pointer:
        before_pointer(version)
    store.put(store.uri.join(POINTER), f"{version}\n".encode())
    return Published(plan.uri, version, store.triton_uri(store.uri.join(VERSIONS, version)), len(files),
                     plan.total_bytes, reused)


def publish(repository: Path, uri: str, on_upload: Callable[[str, int], None] | None = None,
            before_pointer: Callable[[str], None] | None = None) -> Published:
    """Upload ``repository`` to ``uri`` atomically (see :func:`upload`)."""
    return upload(prepare(repository, uri), on_upload, before_pointer)


def _complete_version(store: ObjectStore, digest: str) -> str | None:
    """A version of the same content whose upload finished (its manifest exists), newest first."""
    names = [key.rsplit("/", 1)[-1] for key in store.list(store.uri.join(MANIFESTS) + "/")]
    matching = sorted((n[:-len(".json")] for n in names if n.endswith(f"-{digest}.json")), reverse=True)
    return matching[0] if matching else None


# ---------------------------------------------------------------- what tritonserver is given


class RepositorySource(ABC):
    """A model repository as tritonserver reads it: ``location`` is its --model-repository."""

    location: str

    @abstractmethod
    def read_configs(self) -> dict:
        """``{model: model_config_pb2.ModelConfig}`` (sorted by name)."""

    @abstractmethod
    def describe(self) -> str:
        """One phrase for messages: where the models come from."""


@dataclass(frozen=True)
class LocalRepository(RepositorySource):
    path: Path

    @property
    def location(self) -> str:
        return str(self.path)

    def read_configs(self) -> dict:
        if not self.path.is_dir():
            raise StorageError(f"{self.path}: no such model repository")
        return read_configs(self.path)

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RemoteRepository(RepositorySource):
    """A published version: the pointer was resolved once, so every replica serves the same one."""

    uri: str
    version: str
    location: str  # e.g. s3://host:port/bucket/prefix/versions/<id>
    store: ObjectStore = field(repr=False, compare=False)

    def read_configs(self) -> dict:
        prefix = self.store.uri.join(VERSIONS, self.version) + "/"
        configs = {}
        for key in sorted(self.store.list(prefix)):
            model, _, rest = key[len(prefix):].partition("/")
            if rest != "config.pbtxt" or model.startswith("."):
                continue
            data = self.store.get(key) or b""
            try:
                configs[model] = parse_config(data.decode("utf-8"), model)
            except (UnicodeDecodeError, EmitError) as exc:
                raise StorageError(f"{self.location}/{model}/config.pbtxt: {str(exc).splitlines()[0]}") from None
        return configs

    def describe(self) -> str:
        return f"{self.uri} (version {self.version})"


def resolve(uri: str) -> RemoteRepository:
    """Follow ``<prefix>/CURRENT``: the published version tritonserver should read."""
    store = open_store(uri)
    store.check()
    pointer = store.get(store.uri.join(POINTER))
    version = (pointer or b"").decode("utf-8", errors="replace").strip()
    if not version:
        raise StorageError(f"nothing published at {uri} (no {store.uri.join(POINTER) or POINTER} object; "
                           f"run `tritongen publish REPO {uri}`)")
    return RemoteRepository(uri, version, store.triton_uri(store.uri.join(VERSIONS, version)), store)


def versioned_uri(uri: str) -> str:
    """``s3://[host:port/]bucket/prefix`` -> the URI of the version it currently points at."""
    return resolve(uri).location


def open_repository(location: "str | Path | RepositorySource") -> RepositorySource:
    """A local directory, or the version a storage URI currently points at."""
    if isinstance(location, RepositorySource):  # already resolved (e.g. once for all replicas)
        return location
    if is_store_uri(str(location)):
        return resolve(str(location))
    return LocalRepository(Path(location).resolve())
