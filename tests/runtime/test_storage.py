"""Artifacts in object storage: `nimbus deploy` to S3 (moto's server on loopback), then a real
server process serves s3:// URIs, a model repository prefix and Vertex AI's AIP_STORAGE_URI over
HTTP. Corrupted objects, keys leaving the cache, unpinned https and plain http are refused."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import sys
import threading
import uuid

import boto3
import httpx
import numpy as np
import pytest
import trustme
from models.cases import converted
from nimbus.runtime.session import Session
from nimbus.runtime.storage import StorageError, fetch, upload
from test_server import free_port, images, lenet_request, output_array, running_server
from typer.testing import CliRunner

import nimbus
from nimbus.cli import app


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    _, graph = converted("lenet")
    return nimbus.compile(graph).save(tmp_path_factory.mktemp("models") / "lenet.nimbus")


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, tmp_path):
    """A new bucket's name; boto3 in this process and in the servers it starts (they inherit the
    environment) reaches moto through AWS_ENDPOINT_URL, and caches in tmp_path."""
    settings = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                "NIMBUS_CACHE_DIR": str(tmp_path / "cache")}
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def deploy(*arguments):
    return CliRunner().invoke(app, ["deploy", *map(str, arguments)])


def assert_lenet_answers(http, path, session):
    x = images(2)
    response = http.post(path, json=lenet_request(x))
    assert response.status_code == 200, response.text
    # Another process: its BLAS may split float products differently, so not bit for bit.
    np.testing.assert_allclose(output_array(response.json()["outputs"][0]),
                               session.run({"x": x})["output"], rtol=1e-5, atol=1e-6)


def test_deploy_then_serve_from_s3(lenet, bucket, tmp_path):
    result = deploy(lenet, f"s3://{bucket}/flat/")
    assert result.exit_code == 0, result.output
    assert result.output == f"s3://{bucket}/flat/lenet.nimbus\n"
    for version in ("1", "2"):
        result = deploy(lenet, f"s3://{bucket}/repo/classifier/{version}/model.nimbus")
        assert result.exit_code == 0, result.output
    head = boto3.client("s3").head_object(Bucket=bucket, Key="flat/lenet.nimbus")
    assert head["Metadata"]["sha256"] == hashlib.sha256(lenet.read_bytes()).hexdigest()

    broken = tmp_path / "broken.nimbus"
    broken.write_bytes(lenet.read_bytes()[:-100])
    result = deploy(broken, f"s3://{bucket}/flat/")
    assert result.exit_code == 1 and "error:" in result.output
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="flat/broken")

    command = [sys.executable, "-m", "nimbus.cli", "serve", f"s3://{bucket}/flat/lenet.nimbus",
               "--model-repository", f"s3://{bucket}/repo"]
    session = Session(lenet)
    with running_server(command, tmp_path) as (_, base, _), httpx.Client(base_url=base, timeout=10) as http:
        assert_lenet_answers(http, "/v2/models/lenet/infer", session)
        assert http.get("/v2/models/classifier").json()["versions"] == ["1", "2"]
        assert_lenet_answers(http, "/v2/models/classifier/versions/1/infer", session)


def test_vertex_serves_aip_storage_uri(lenet, bucket, tmp_path, monkeypatch):
    """Vertex AI names a folder (gs://, here s3://: one code path) without a trailing '/'."""
    upload(lenet, f"s3://{bucket}/vertex/model/")
    monkeypatch.setenv("AIP_STORAGE_URI", f"s3://{bucket}/vertex/model")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/health")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/predict")
    x = images(2)
    with running_server([sys.executable, "-m", "nimbus.runtime.server"], tmp_path) as (_, base, _):
        assert httpx.get(f"{base}/health").status_code == 200
        response = httpx.post(f"{base}/predict", json={"instances": x.tolist()}, timeout=10)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.array(response.json()["predictions"]),
                                   Session(lenet).run({"x": x})["output"], rtol=1e-5, atol=1e-6)


def test_corrupted_object_is_refused(lenet, bucket, tmp_path):
    data = bytearray(lenet.read_bytes())
    data[len(data) // 2] ^= 1
    boto3.client("s3").put_object(Bucket=bucket, Key="bad/lenet.nimbus", Body=bytes(data),
                                  Metadata={"sha256": hashlib.sha256(lenet.read_bytes()).hexdigest()})
    uri = f"s3://{bucket}/bad/lenet.nimbus"
    with pytest.raises(StorageError, match=r"sha256 [0-9a-f]{64}, not the object's sha256 metadata"):
        fetch(uri)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left behind
    result = subprocess.run([sys.executable, "-m", "nimbus.runtime.server", uri, "--port",
                             str(free_port())], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1 and "refusing them (corrupted or replaced)" in result.stderr


def test_prefix_fetch_keeps_layout_and_drops_stale_copies(lenet, bucket):
    for key in ("p/a/1/model.nimbus", "p/b.nimbus"):
        upload(lenet, f"s3://{bucket}/{key}")
    boto3.client("s3").put_object(Bucket=bucket, Key="p/notes.txt", Body=b"not an artifact")
    root = fetch(f"s3://{bucket}/p/")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "a/1/model.nimbus", "b.nimbus"]
    boto3.client("s3").delete_object(Bucket=bucket, Key="p/b.nimbus")
    assert fetch(f"s3://{bucket}/p/") == root and not (root / "b.nimbus").exists()
    with pytest.raises(StorageError, match="no .nimbus object under"):
        fetch(f"s3://{bucket}/empty/")


def test_object_without_a_digest_is_used_with_a_warning(lenet, bucket, caplog):
    boto3.client("s3").put_object(Bucket=bucket, Key="plain/lenet.nimbus", Body=lenet.read_bytes())
    assert fetch(f"s3://{bucket}/plain/lenet.nimbus").read_bytes() == lenet.read_bytes()
    assert "has no sha256 metadata (upload with `nimbus deploy`) or pin" in caplog.text


@pytest.mark.parametrize("key", ["evil/../../outside.nimbus", "evil//etc/x.nimbus", "evil/./x.nimbus"])
def test_keys_leaving_the_cache_are_refused(bucket, tmp_path, key):
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"x")
    with pytest.raises(StorageError, match="refusing the object key"):
        fetch(f"s3://{bucket}/evil/")
    assert not [p for p in tmp_path.rglob("*.nimbus")]


@pytest.fixture
def https_origin(tmp_path, monkeypatch, lenet):
    """An https server on loopback serving the artifact at /lenet.nimbus and a redirect to
    plain http at /downgrade; its CA is the one urllib trusts (SSL_CERT_FILE)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("NIMBUS_CACHE_DIR", str(tmp_path / "cache"))
    body = lenet.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/downgrade":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{port}/lenet.nimbus")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{port}", hashlib.sha256(body).hexdigest()
    server.shutdown()


def test_https_needs_a_pin_and_plain_http_is_refused(https_origin, lenet):
    origin, digest = https_origin
    with pytest.raises(StorageError, match="needs a sha256 pin"):
        fetch(f"{origin}/lenet.nimbus")
    path = fetch(f"{origin}/lenet.nimbus#sha256={digest}")
    assert path.name == "lenet.nimbus" and path.read_bytes() == lenet.read_bytes()
    with pytest.raises(StorageError, match="not the pin"):
        fetch(f"{origin}/lenet.nimbus#sha256={'0' * 64}")
    with pytest.raises(StorageError, match="not https"):
        fetch(f"{origin}/downgrade#sha256={digest}")
    with pytest.raises(StorageError, match="plain http"):
        fetch(f"http://127.0.0.1:1/lenet.nimbus#sha256={digest}")
    with pytest.raises(StorageError, match="names one object, not a prefix"):
        fetch(f"{origin}/models/#sha256={digest}")


def test_local_paths_pass_through_and_missing_clients_name_the_extra(lenet):
    assert fetch(lenet) == lenet and fetch(f"file://{lenet}") == lenet
    with pytest.raises(StorageError, match="expected a local path, s3://"):
        fetch("ftp://host/m.nimbus")
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError, match=r"pip install 'nimbus\[gcs\]'"):
            fetch("gs://bucket/m.nimbus")


def test_storage_imports_no_client_library():
    code = ("import sys, nimbus.runtime.storage\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'google', 'azure')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
