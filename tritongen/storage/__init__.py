"""Object-storage model repositories: ``publish`` a built repository to S3 / GCS / Azure
atomically (versions + a pointer written last), and resolve a URI to what tritonserver reads."""
from . import azure, gcs, s3  # noqa: F401  (each registers its scheme)
from .base import STORES, ObjectStore, StoreURI, is_store_uri, open_store
from .errors import StorageError
from .repository import (LocalRepository, Published, RemoteRepository, RepositorySource, Upload, open_repository,
                         prepare, publish, repository_files, resolve, upload, versioned_uri)

__all__ = ["STORES", "ObjectStore", "StoreURI", "StorageError", "LocalRepository", "Published", "RemoteRepository",
           "RepositorySource", "Upload", "is_store_uri", "prepare", "upload", "open_repository", "open_store", "publish", "repository_files",
           "resolve", "versioned_uri"]
