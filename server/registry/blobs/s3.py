"""The blob store on any S3-compatible service (AWS S3, MinIO, SeaweedFS, Ceph RGW): shared by replicas.

Owns the key layout (`<prefix>/<ab>/<sha256>`, the file store's layout under a key prefix), the client's
configuration and the translation of S3's answers into the package's errors: a missing key is
BlobMissing; anything that says "the store is not answering now" (connection refused or reset, a
timeout, a 5xx, missing or refused credentials, a missing bucket) is BlobStoreUnavailable, which the API
answers with 503 and Retry-After. Other client errors are bugs and propagate as botocore raised them.

Configuration comes from the AWS SDK's standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; us-east-1 when no region is configured), so deployments set
it the way they set it for every other S3 client. The credentials need GetObject, PutObject,
DeleteObject and ListBucket on the bucket: without ListBucket, S3 answers 403 rather than 404 for a
missing key, which this store would take for refused credentials.

Bounded calls (SPEC 4: a write answers 503 within 3 s when the store is gone or hung): connect timeout
1 s, read timeout 1 s (each wait for the socket: an answer's first byte, each further chunk, room to send
into), at most 2 attempts in all (botocore's standard mode; its backoff between attempts is at most 50 ms
for errors that are not throttling). So a call to a store that does not answer (a stopped process, whose
kernel still accepts and acknowledges; a host that drops packets) gives up after about 2 s, and one that
refuses connections at once. A call that got no answer opens the store's circuit (server.registry.
circuit): calls fail at once until the health probe (every second in a server) gets an answer, so a hung
store costs the requests that met it first one such wait, and the rest none. A store that answers, even
with an error, is up.

Checksums: botocore >= 1.36 adds CRC32 checksums to every upload and validates them on download by
default, which MinIO, SeaweedFS and older Ceph reject or mishandle; "when_required" restores the old
behaviour. Integrity does not depend on them: every read is checked against the blob's sha256 name.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions as bx

from server.registry.blobs import (
    BlobMissing,
    BlobStoreUnavailable,
    check_content,
    check_name,
    verified,
)
from server.registry.circuit import Circuit, CircuitOpen

DEFAULT_REGION = "us-east-1"
_RELATIVE_KEY_RE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})")
# The store is unreachable or unusable right now, as opposed to a request this code got wrong; of those,
# no answer at all (refused, reset, timed out) opens the circuit.
_NO_ANSWER = (bx.ConnectionError, bx.HTTPClientError)
_UNAVAILABLE = (*_NO_ANSWER, bx.NoCredentialsError, bx.PartialCredentialsError)
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 1.0
TOTAL_ATTEMPTS = 2
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def client_config() -> botocore.config.Config:
    return botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": TOTAL_ATTEMPTS},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3BlobStore:
    def __init__(self, bucket: str, key_prefix: str = "") -> None:
        if not bucket:
            raise ValueError(f"S3 blob store: expected a bucket name, got {bucket!r}")
        self.bucket = bucket
        self.key_prefix = key_prefix.strip("/")
        # A session of its own: the default session is shared module state and not safe to build clients
        # from concurrently; the client itself is thread-safe and reused for every call.
        session = boto3.session.Session()
        self._client = session.client("s3", region_name=session.region_name or DEFAULT_REGION, config=client_config())
        self._circuit = Circuit("the blob store")
        # botocore sends a PutObject with "Expect: 100-continue" and waits up to 1 s for "100 Continue"
        # before the body: against a store that does not answer, a second lost per attempt on top of the
        # read timeout. An artifact is sent whole at once instead (the header is not signed).
        self._client.meta.events.register("before-sign.s3.PutObject", _without_expect_continue)

    def describe(self) -> str:
        location = f"s3://{self.bucket}/{self.key_prefix}".rstrip("/")
        endpoint = urlsplit(self._client.meta.endpoint_url)
        host = endpoint.netloc.rpartition("@")[2]  # never show credentials someone put into the URL
        return f"{location} at {endpoint.scheme}://{host}"

    def key_for(self, sha256: str) -> str:
        sha256 = check_name(sha256)
        relative = f"{sha256[:2]}/{sha256}"
        return f"{self.key_prefix}/{relative}" if self.key_prefix else relative

    def exists(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        try:
            with self._translated("checking", key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except BlobMissing:
            return False
        return True

    def put(self, sha256: str, data: bytes) -> None:
        check_content(sha256, data)
        key = self.key_for(sha256)
        with self._translated("writing", key):
            # The sha256 in metadata lets an operator check an object with nothing but the S3 console.
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data), Metadata={"sha256": sha256}
            )

    def ensure(self, sha256: str, data: bytes) -> None:
        if not self.exists(sha256):
            self.put(sha256, data)

    def read(self, sha256: str) -> bytes:
        key = self.key_for(sha256)
        with self._translated("reading", key):
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with contextlib.closing(body):
                data = body.read()
        return verified(sha256, data, f"{self.describe()}/{key}")

    def remove(self, sha256: str) -> None:
        key = self.key_for(sha256)
        with self._translated("removing", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for absent keys too

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        start = f"{self.key_prefix}/" if self.key_prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        with self._translated(f"listing {start or '/'}"):
            for page in pages:
                for item in page.get("Contents", ()):
                    match = _RELATIVE_KEY_RE.fullmatch(item["Key"][len(start) :])
                    if match and match[2].startswith(match[1]):
                        yield match[2], item["LastModified"].timestamp()

    def remove_temp_files(self, older_than_s: float) -> int:
        return 0  # a PUT is atomic in S3: an interrupted one leaves nothing behind

    def ping(self) -> None:
        with self._translated("checking the bucket", probe=True):  # the health probe: asks even while the circuit is open
            self._client.head_bucket(Bucket=self.bucket)

    def close(self) -> None:
        self._client.close()

    @contextlib.contextmanager
    def _translated(self, doing: str, key: str | None = None, probe: bool = False) -> Iterator[None]:
        """One call to the store, `doing` something (to `key`, if one): refused at once while the circuit
        is open, unless it is the health `probe`; botocore's errors become the package's, and an answer
        closes the circuit, none opens it."""
        what = f"{doing} {key}" if key else doing
        try:
            self._circuit.admit(probe)
        except CircuitOpen as error:
            raise BlobStoreUnavailable(f"blob store {self.describe()}: expected an answer {what}, got none: {error}") from None
        try:
            yield
        except bx.ClientError as error:
            self._circuit.answered()
            raise self._client_error(what, key, error) from error
        except _UNAVAILABLE as error:
            if isinstance(error, _NO_ANSWER):
                self._circuit.unanswered(f"{type(error).__name__} {what}")
            raise BlobStoreUnavailable(
                f"blob store {self.describe()}: expected an answer {what}, got {type(error).__name__}: {error}"
            ) from error
        else:
            self._circuit.answered()
        finally:
            self._circuit.release()

    def _client_error(self, what: str, key: str | None, error: bx.ClientError) -> Exception:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        where = f"blob store {self.describe()}"
        # A 404 without a key (HeadBucket, ListObjects) can only mean the bucket; with one, HeadObject
        # cannot tell a missing bucket from a missing key, and ping() is what reports the bucket.
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return BlobStoreUnavailable(
                f"{where}: expected bucket {self.bucket!r} to exist, got none: create it (aws s3 mb s3://{self.bucket})"
            )
        if code in _MISSING_CODES or status == 404:
            return BlobMissing(f"no blob {key} in {where}")
        # 401/403: a replica whose credentials were revoked or rotated cannot use the store until they
        # are fixed, which is an outage to its clients, not a bad request of theirs.
        if status >= 500 or status in (401, 403):
            return BlobStoreUnavailable(f"{where}: expected an answer {what}, got HTTP {status} {code}")
        return error


def _without_expect_continue(request, **_) -> None:
    del request.headers["Expect"]  # no error when absent
