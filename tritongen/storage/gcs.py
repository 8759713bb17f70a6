"""Google Cloud Storage: ``gs://bucket/prefix``. Credentials from GOOGLE_APPLICATION_CREDENTIALS
(what tritonserver reads too); needs google-cloud-storage (``tritongen[gcs]``)."""
from __future__ import annotations

from .base import STORES, ObjectStore, StoreURI, require
from .errors import StorageError


@STORES.register
class GcsStore(ObjectStore):
    scheme = "gs"

    def __init__(self, uri: StoreURI):
        super().__init__(uri)
        storage = require("google.cloud.storage", "google-cloud-storage", "gcs", self.scheme)
        from google.auth.exceptions import DefaultCredentialsError

        try:
            self.bucket = storage.Client().bucket(uri.bucket)
        except DefaultCredentialsError:
            raise StorageError(f"{uri.text}: no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS") from None

    def _guard(self, what: str, action):
        from google.api_core import exceptions

        try:
            return action()
        except exceptions.NotFound:
            raise StorageError(f"{self.uri.text}: bucket {self.uri.bucket!r} does not exist ({what})") from None
        except exceptions.GoogleAPIError as exc:
            raise StorageError(f"{self.uri.text}: GCS {what}: {exc}") from None

    def check(self) -> None:
        if not self._guard("bucket", self.bucket.exists):
            raise StorageError(f"{self.uri.text}: bucket {self.uri.bucket!r} does not exist")

    def put(self, key: str, data: bytes) -> None:
        self._guard(f"put {key}", lambda: self.bucket.blob(key).upload_from_string(data))

    def get(self, key: str) -> bytes | None:
        blob = self.bucket.blob(key)
        if not self._guard(f"get {key}", blob.exists):
            return None
        return self._guard(f"get {key}", blob.download_as_bytes)

    def list(self, prefix: str) -> list[str]:
        return self._guard(f"list {prefix}", lambda: [b.name for b in self.bucket.list_blobs(prefix=prefix)])

    def triton_uri(self, key: str) -> str:
        return f"gs://{self.uri.bucket}/{key}"
