"""Artifacts in object storage: ``fetch`` copies what a URI names into a local cache folder and
returns the local path; ``upload`` (``nimbus deploy``) writes an artifact with its sha256.

- a local path or ``file:///abs/path``: returned as the path;
- ``s3://bucket/key``: boto3 (``pip install 'nimbus[s3]'``), configured by the standard AWS
  variables, ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_S3`` included;
- ``gs://bucket/key``: google-cloud-storage (``nimbus[gcs]``), with the default credentials;
- ``az://container/blob`` (the account from AZURE_STORAGE_CONNECTION_STRING or
  AZURE_STORAGE_ACCOUNT) or ``https://ACCOUNT.blob.core.windows.net/container/blob``:
  azure-storage-blob (``nimbus[azure]``), with azure-identity's credentials where installed;
- ``https://host/path/m.nimbus#sha256=HEX``: the standard library; the pin is required.

A URI ending in ``/`` (or a bare bucket) is a prefix: every ``*.nimbus`` under it is fetched,
keeping the layout below the prefix (so a model repository ``name/version/model.nimbus`` arrives
whole), into a folder, whose path is returned.

Bytes go to a temporary file beside their destination and are renamed into place only once their
sha256 matches every digest known for them: the object's ``sha256`` metadata (which ``upload``
writes) and the URI's ``#sha256=`` pin. Plain http is refused, and https without a pin: nothing
but the pin vouches for those bytes. An object-store object without a digest is used with a
warning (the store authenticated the request; the artifact's own CRC-32s are checked at load).
A remote key never becomes a path outside the cache folder: keys that are absolute or have
empty, ``.`` or ``..`` segments are refused.

Only the standard library is imported here; each store's client is imported when a URI needs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import logging
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

log = logging.getLogger("nimbus.storage")

ARTIFACT_SUFFIX = ".nimbus"
_PIN = re.compile(r"sha256=([0-9a-fA-F]{64})")
_AZURE_HOST_SUFFIX = ".blob.core.windows.net"
_CHUNK = 1 << 20


class StorageError(ValueError):
    """A URI that cannot be fetched or written; the message names the URI and the reason."""


def is_remote(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def default_cache_dir() -> Path:
    """NIMBUS_CACHE_DIR, else $XDG_CACHE_HOME/nimbus, else ~/.cache/nimbus."""
    if os.environ.get("NIMBUS_CACHE_DIR"):
        return Path(os.environ["NIMBUS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nimbus"


def fetch(location: str | Path, cache_dir: Path | str | None = None) -> Path:
    """The local path of what ``location`` names: a local path as it is, else the verified copy
    fetched into ``cache_dir`` (default: ``default_cache_dir()``), a file for an object and a
    folder for a prefix."""
    text = str(location)
    if text.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    if not is_remote(text):
        return Path(text)
    uri, pin = _split_pin(text)
    store, key = _locate(uri)
    if isinstance(store, _Https) and pin is None:
        raise StorageError(f"refusing {uri}: an https download needs a sha256 pin "
                           f"({uri}#sha256=HEX)")
    # One folder per URI, so that two URIs never share (or clobber) a cached file.
    root = Path(cache_dir or default_cache_dir()) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    with _reporting(store, "fetch", uri):
        if key == "" or key.endswith("/"):
            if pin is not None:
                raise StorageError(f"{text}: a sha256 pin names one object, not a prefix")
            return _fetch_prefix(store, uri if uri.endswith("/") else uri + "/", key, root)
        destination = _local_path(root, PurePosixPath(urlsplit(uri).path).name, uri)
        return _fetch_object(store, uri, key, destination, pin)


def upload(path: Path | str, uri: str) -> str:
    """Upload the artifact at ``path`` to ``uri`` (a prefix ending in ``/`` keeps the file's name)
    with its sha256 in the object's metadata; returns the object's URI."""
    path = Path(path)
    if uri.endswith("/"):
        uri += path.name
    store, key = _locate(uri)
    if isinstance(store, _Https):
        raise StorageError(f"cannot upload to {uri}: use s3://, gs:// or az://")
    with _reporting(store, "upload to", uri):
        store.upload(path, key, sha256_of(path))
    return uri


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _split_pin(uri: str) -> tuple[str, str | None]:
    """``uri#sha256=HEX`` -> (uri, hex); any other ``#`` stays part of the URI (S3 keys may hold one)."""
    base, sep, fragment = uri.rpartition("#")
    match = _PIN.fullmatch(fragment)
    return (base, match.group(1).lower()) if sep and match else (uri, None)


def _locate(uri: str):
    """(the store holding ``uri``, the object key or prefix inside it)."""
    scheme, _, rest = uri.partition("://")
    if scheme == "http":
        raise StorageError(f"refusing plain http ({uri}): use https with a sha256 pin")
    if scheme == "https":
        parts = urlsplit(uri)
        if (parts.hostname or "").endswith(_AZURE_HOST_SUFFIX):
            container, _, blob = parts.path[1:].partition("/")
            return _Azure(f"https://{parts.netloc}", container), blob
        return _Https(uri), parts.path
    bucket, _, key = rest.partition("/")
    stores = {"s3": _S3, "gs": _Gcs, "az": _Azure.from_environment}
    if scheme not in stores or not bucket:
        raise StorageError(f"cannot read {uri!r}: expected a local path, s3://, gs://, az:// or "
                           "https:// (with #sha256=HEX)")
    return stores[scheme](bucket), key


@contextlib.contextmanager
def _reporting(store, action: str, uri: str):
    """Client and I/O errors as a StorageError naming the URI (the command line prints it)."""
    try:
        yield
    except (OSError, *store.errors) as err:
        raise StorageError(f"cannot {action} {uri}: {err}") from None


def _local_path(root: Path, relative: str, uri: str) -> Path:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"{uri}: refusing the object key {relative!r}: it is absolute or has "
                           "an empty, '.' or '..' segment, so it could land outside the cache")
    return root.joinpath(*parts)


def _fetch_prefix(store, uri: str, prefix: str, root: Path) -> Path:
    keys = [key for key in store.keys(prefix) if key.endswith(ARTIFACT_SUFFIX)]
    if not keys:
        raise StorageError(f"no {ARTIFACT_SUFFIX} object under {uri}")
    wanted = {_local_path(root, key[len(prefix):], uri): key for key in keys}
    for stale in root.rglob(f"*{ARTIFACT_SUFFIX}"):  # objects deleted since the last fetch
        if stale not in wanted:
            stale.unlink()
    for destination, key in wanted.items():
        _fetch_object(store, uri + key[len(prefix):], key, destination, None)
    return root


def _fetch_object(store, uri: str, key: str, destination: Path, pin: str | None) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=destination.parent, prefix=".", suffix=".part")
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            declared = store.download(key, file)
        digest = sha256_of(partial)
        for source, expected in (("pin", pin), ("object's sha256 metadata", declared)):
            if expected is not None and expected.lower() != digest:
                raise StorageError(f"{uri}: the downloaded bytes have sha256 {digest}, not the "
                                   f"{source} {expected}; refusing them (corrupted or replaced)")
        if pin is None and declared is None:
            log.warning("%s has no sha256 metadata (upload with `nimbus deploy`) or pin; "
                        "only the artifact's own checksums guard it", uri)
        os.replace(partial, destination)  # atomic: a reader sees the old file or the verified one
        log.info("fetched %s (sha256 %s)", uri, digest)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StorageError(f"this URI needs {module}: pip install 'nimbus[{extra}]'") from None


class _S3:
    def __init__(self, bucket: str):
        boto3 = _require("boto3", "s3")
        botocore_exceptions = _require("botocore.exceptions", "s3")
        self.errors = (botocore_exceptions.BotoCoreError, botocore_exceptions.ClientError)
        # boto3 >= 1.28 reads AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself, like the AWS CLI.
        self.client = boto3.client("s3")
        self.bucket = bucket

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def download(self, key: str, file) -> str | None:
        """Writes the object to ``file``; returns its sha256 metadata. One GET gives both, so
        they describe the same version of the object."""
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        for chunk in response["Body"].iter_chunks(_CHUNK):
            file.write(chunk)
        return response["Metadata"].get("sha256")

    def upload(self, path: Path, key: str, sha256: str) -> None:
        # S3 also checks the SHA-256 of each part it receives.
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs={
            "Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"})


class _Gcs:
    def __init__(self, bucket: str):
        storage = _require("google.cloud.storage", "gcs")
        api_exceptions = _require("google.api_core.exceptions", "gcs")
        auth_exceptions = _require("google.auth.exceptions", "gcs")
        self.errors = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError)
        try:
            self.client = storage.Client()
        except auth_exceptions.GoogleAuthError as err:
            raise StorageError(f"gs://{bucket}: no Google Cloud credentials: {err}") from None
        self.bucket = self.client.bucket(bucket)

    def keys(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.client.list_blobs(self.bucket, prefix=prefix)]

    def download(self, key: str, file) -> str | None:
        blob = self.bucket.get_blob(key)
        if blob is None:
            raise StorageError(f"gs://{self.bucket.name}/{key}: no such object")
        # The generation pins the bytes to the metadata just read; the client checks their checksum.
        blob.download_to_file(file, if_generation_match=blob.generation)
        return (blob.metadata or {}).get("sha256")

    def upload(self, path: Path, key: str, sha256: str) -> None:
        blob = self.bucket.blob(key)
        blob.metadata = {"sha256": sha256}
        blob.upload_from_filename(str(path), checksum="crc32c")


class _Azure:
    def __init__(self, account_url: str | None, container: str):
        blob = _require("azure.storage.blob", "azure")
        self.errors = (_require("azure.core.exceptions", "azure").AzureError,)
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if account_url is None and connection:
            service = blob.BlobServiceClient.from_connection_string(connection)
        elif account_url is None:
            raise StorageError("az:// URIs need AZURE_STORAGE_CONNECTION_STRING or "
                               "AZURE_STORAGE_ACCOUNT")
        else:
            service = blob.BlobServiceClient(account_url, credential=_azure_credential())
        self.container = service.get_container_client(container)

    @classmethod
    def from_environment(cls, container: str) -> _Azure:
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        return cls(f"https://{account}{_AZURE_HOST_SUFFIX}" if account else None, container)

    def keys(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.container.list_blobs(name_starts_with=prefix)]

    def download(self, key: str, file) -> str | None:
        downloader = self.container.download_blob(key)
        downloader.readinto(file)
        return (downloader.properties.metadata or {}).get("sha256")

    def upload(self, path: Path, key: str, sha256: str) -> None:
        with open(path, "rb") as file:
            self.container.upload_blob(key, file, overwrite=True, metadata={"sha256": sha256})


def _azure_credential():
    """Managed identity, environment or CLI login through azure-identity where it is
    installed; else none (a public container, or a connection string for az://)."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return None
    return DefaultAzureCredential()


class _Https:
    """A pinned https download. The standard library's urllib does it: the serve extra has no
    HTTP client, and the pin, not the transport, vouches for the bytes, so nothing more is needed."""

    errors = (http.client.HTTPException,)

    def __init__(self, url: str):
        self.url = url

    def keys(self, prefix: str) -> list[str]:
        raise StorageError(f"{self.url}: https cannot list a prefix; name each artifact with its pin")

    def download(self, key: str, file) -> None:
        opener = urllib.request.build_opener(_HttpsRedirectsOnly)
        with opener.open(self.url, timeout=60) as response:
            shutil.copyfileobj(response, file, _CHUNK)


class _HttpsRedirectsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme != "https":
            raise StorageError(f"refusing the redirect of {req.full_url} to {newurl}: not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
