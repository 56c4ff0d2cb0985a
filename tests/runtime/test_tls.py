"""`nimbus serve --tls-certfile/--tls-keyfile`: a real server process answers https verified
against a throwaway CA (trustme) and nothing over plain http; with `--tls-ca-certs` only clients
holding a certificate from that CA get answers; half a TLS configuration is refused."""

from __future__ import annotations

import contextlib
import re
import ssl
import subprocess
import sys
import time

import httpx
import pytest
import trustme
from models.cases import converted
from test_server import free_port, images, lenet_request
from typer.testing import CliRunner

import nimbus
from nimbus.cli import app


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    _, graph = converted("lenet")
    return nimbus.compile(graph).save(tmp_path_factory.mktemp("models") / "lenet.nimbus")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_files(ca, tmp_path):
    """{"cert", "key", "ca"}: PEM files of a server certificate for 127.0.0.1 and its CA."""
    leaf = ca.issue_cert("127.0.0.1")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    files["cert"].write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    return files


def client_context(ca, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert:
        ca.issue_cert("client@example.com").configure_cert(context)
    return context


@contextlib.contextmanager
def running_tls_server(arguments: list[str], tmp_path, context: ssl.SSLContext):
    """Like test_server.running_server, but polling readiness over https: yields the base URL."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([*arguments, "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", verify=context, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base
    finally:
        process.kill()
        process.wait()


def test_https_verified_by_the_ca_and_no_plain_http(lenet, ca, tls_files, tmp_path):
    command = [sys.executable, "-m", "nimbus.cli", "serve", str(lenet),
               "--tls-certfile", str(tls_files["cert"]), "--tls-keyfile", str(tls_files["key"])]
    context = client_context(ca)
    with running_tls_server(command, tmp_path, context) as base:
        response = httpx.post(f"{base}/v2/models/lenet/infer", json=lenet_request(images(1)),
                              verify=context, timeout=10)
        assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 10]
        with pytest.raises(httpx.TransportError):
            httpx.get(base.replace("https://", "http://") + "/v2/health/ready", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/v2/health/ready", verify=ssl.create_default_context(), timeout=5)


def test_client_certificates_with_tls_ca_certs(lenet, ca, tls_files, tmp_path):
    command = [sys.executable, "-m", "nimbus.runtime.server", str(lenet),
               "--tls-certfile", str(tls_files["cert"]), "--tls-keyfile", str(tls_files["key"]),
               "--tls-ca-certs", str(tls_files["ca"])]
    trusted = client_context(ca, client_cert=True)
    with running_tls_server(command, tmp_path, trusted) as base:
        assert httpx.get(f"{base}/v2/models/lenet", verify=trusted, timeout=5).status_code == 200
        with pytest.raises(httpx.TransportError):  # TLS 1.3: refused at the first read
            httpx.get(f"{base}/v2/health/ready", verify=client_context(ca), timeout=5)
        other_ca = trustme.CA()
        stranger = client_context(ca)
        other_ca.issue_cert("stranger@example.com").configure_cert(stranger)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/v2/health/ready", verify=stranger, timeout=5)


@pytest.mark.parametrize("options, message", [
    (["--tls-certfile", "{cert}"], "--tls-certfile and --tls-keyfile go together"),
    (["--tls-keyfile", "{key}"], "--tls-certfile and --tls-keyfile go together"),
    (["--tls-ca-certs", "{ca}"], "--tls-ca-certs .* needs --tls-certfile and --tls-keyfile"),
    (["--tls-certfile", "{cert}", "--tls-keyfile", "{ca}"], "cannot load the TLS certificate and key"),
])
def test_incomplete_tls_configuration_is_refused(lenet, tls_files, options, message):
    paths = {name: str(path) for name, path in tls_files.items()}
    result = CliRunner().invoke(app, ["serve", str(lenet), *(o.format(**paths) for o in options)])
    assert result.exit_code == 1
    assert re.search(message, result.output), result.output
