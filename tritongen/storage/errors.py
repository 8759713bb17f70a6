"""The one error of this stage (a TritongenError: the CLI prints it as one line)."""
from ..errors import TritongenError


class StorageError(TritongenError):
    """An object-storage repository cannot be read or written (URI, credentials, bucket, pointer)."""
