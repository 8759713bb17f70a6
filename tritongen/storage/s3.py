"""Amazon S3 and S3-compatible servers: ``s3://bucket/prefix`` (AWS) or
``s3://host:port/bucket/prefix`` (another endpoint, over http, as tritonserver reads it).

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_DEFAULT_REGION / AWS_REGION): the same variables tritonserver, a child
of this process, reads. Nothing is written to a file or a command line."""
from __future__ import annotations

import os

from .base import STORES, ObjectStore, StoreURI, require
from .errors import StorageError

MISSING = {"404", "NoSuchKey", "NotFound"}
NO_BUCKET = {"NoSuchBucket"}
CHECK = "checking the bucket"  # HEAD on a missing bucket answers a bare 404


@STORES.register
class S3Store(ObjectStore):
    scheme = "s3"

    @classmethod
    def parse_uri(cls, text: str, rest: str) -> StoreURI:
        first, _, tail = rest.partition("/")
        if ":" in first:  # tritonserver's rule: a first part with a port is an endpoint
            bucket, _, prefix = tail.partition("/")
            if not bucket:
                raise StorageError(f"{text}: no bucket (expected s3://host:port/bucket/prefix)")
            return StoreURI(text, cls.scheme, bucket, prefix.strip("/"), endpoint=first)
        return super().parse_uri(text, rest)

    def __init__(self, uri: StoreURI):
        super().__init__(uri)
        boto3 = require("boto3", "boto3", "s3", self.scheme)
        from botocore.config import Config

        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (key and secret):
            raise StorageError(f"{uri.text}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "(and AWS_SESSION_TOKEN for temporary ones)")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        self.where = f"http://{uri.endpoint}" if uri.endpoint else f"S3 ({region})"
        # Explicit keys: boto3 would otherwise also try ~/.aws and the instance metadata service.
        self.client = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret,
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN"), region_name=region,
        ).client("s3", endpoint_url=f"http://{uri.endpoint}" if uri.endpoint else None,
                 config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}))

    def _fail(self, exc: Exception, what: str) -> StorageError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        bucket = self.uri.bucket
        if isinstance(exc, EndpointConnectionError):
            return StorageError(f"{self.uri.text}: cannot reach {self.where} ({what})")
        if isinstance(exc, NoCredentialsError):
            return StorageError(f"{self.uri.text}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in NO_BUCKET or (what == CHECK and code in MISSING):
                return StorageError(f"{self.uri.text}: bucket {bucket!r} does not exist at {self.where}")
            if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                return StorageError(f"{self.uri.text}: access to bucket {bucket!r} denied ({code}); check AWS_* credentials")
            message = exc.response.get("Error", {}).get("Message") or code
            return StorageError(f"{self.uri.text}: S3 {what}: {message}")
        return StorageError(f"{self.uri.text}: S3 {what}: {exc}")

    def _call(self, what: str, method, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(Bucket=self.uri.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, what) from None

    def check(self) -> None:
        self._call(CHECK, self.client.head_bucket)

    def put(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", self.client.put_object, Key=key, Body=data)

    def put_file(self, key: str, path) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # multipart above 8 MB: model weights can exceed one PUT's 5 GB
            self.client.upload_file(str(path), self.uri.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, f"put {key}") from None
        except S3UploadFailedError as exc:
            raise StorageError(f"{self.uri.text}: S3 put {key}: {exc}") from None

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in MISSING:
                return None
            raise self._fail(exc, f"get {key}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"get {key}") from None

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.uri.bucket, Prefix=prefix):
                keys += [item["Key"] for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, f"list {prefix}") from None
        return keys

    def triton_uri(self, key: str) -> str:
        host = f"{self.uri.endpoint}/" if self.uri.endpoint else ""
        return f"s3://{host}{self.uri.bucket}/{key}"
