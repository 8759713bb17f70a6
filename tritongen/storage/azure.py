"""Azure Blob Storage: ``as://account/container/prefix`` (tritonserver's syntax). Credentials
from AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY; needs
azure-storage-blob (``tritongen[azure]``)."""
from __future__ import annotations

import os

from .base import STORES, ObjectStore, StoreURI, require
from .errors import StorageError


@STORES.register
class AzureStore(ObjectStore):
    scheme = "as"

    @classmethod
    def parse_uri(cls, text: str, rest: str) -> StoreURI:
        account, _, tail = rest.partition("/")
        container, _, prefix = tail.partition("/")
        if not (account and container):
            raise StorageError(f"{text}: expected as://account/container/prefix")
        return StoreURI(text, cls.scheme, f"{account}/{container}", prefix.strip("/"))

    def __init__(self, uri: StoreURI):
        super().__init__(uri)
        blob = require("azure.storage.blob", "azure-storage-blob", "azure", self.scheme)
        account, container = uri.bucket.split("/", 1)
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        key = os.environ.get("AZURE_STORAGE_KEY")
        if connection:
            service = blob.BlobServiceClient.from_connection_string(connection)
        elif key:
            service = blob.BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=key)
        else:
            raise StorageError(f"{uri.text}: no Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
                               "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY")
        self.container = service.get_container_client(container)

    def _guard(self, what: str, action):
        from azure.core import exceptions

        try:
            return action()
        except exceptions.ResourceNotFoundError as exc:
            if "ContainerNotFound" in str(exc):
                raise StorageError(f"{self.uri.text}: container {self.uri.bucket!r} does not exist") from None
            raise
        except exceptions.ServiceRequestError:
            raise StorageError(f"{self.uri.text}: cannot reach Azure Blob Storage ({what})") from None
        except exceptions.AzureError as exc:
            raise StorageError(f"{self.uri.text}: Azure {what}: {str(exc).splitlines()[0]}") from None

    def check(self) -> None:
        if not self._guard("container", self.container.exists):
            raise StorageError(f"{self.uri.text}: container {self.uri.bucket!r} does not exist")

    def put(self, key: str, data: bytes) -> None:
        self._guard(f"put {key}", lambda: self.container.upload_blob(key, data, overwrite=True))

    def get(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._guard(f"get {key}", lambda: self.container.download_blob(key).readall())
        except ResourceNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        return self._guard(f"list {prefix}", lambda: [b.name for b in self.container.list_blobs(name_starts_with=prefix)])

    def triton_uri(self, key: str) -> str:
        return f"as://{self.uri.bucket}/{key}"
