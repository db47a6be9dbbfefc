"""A CyborgDB service URL is parsed before index keys and vectors are sent to it."""

import datetime
import http.server
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingest_pipeline.stores.tenant_index import CyborgIndexes, IndexUnavailable, check_service_url


@pytest.mark.parametrize("url", ["http://remote-host:8000", "HTTP://remote-host", "Http://10.0.0.5:8000/"])
def test_plain_http_to_a_remote_host_is_refused_whatever_its_case(url):
    with pytest.raises(ValueError, match="refusing plain http"):
        check_service_url(url)


@pytest.mark.parametrize("url", ["ftp://cyborgdb.internal", "cyborgdb.internal:8000", "https://", ""])
def test_a_url_without_an_http_scheme_and_host_is_refused(url):
    with pytest.raises(ValueError, match="must be an http"):
        check_service_url(url)


@pytest.mark.parametrize("url", ["https://cyborgdb.internal", "HTTPS://CyborgDB.internal:443",
                                 "http://127.0.0.1:8000", "HTTP://LOCALHOST:8000", "http://[::1]:8000"])
def test_tls_or_loopback_is_accepted(url):
    check_service_url(url)


@pytest.mark.parametrize("url", [
    "http://evil\\@127.0.0.1:8000",        # urllib.parse: host 127.0.0.1; urllib3 (the SDK's client): host evil
    "http://evil@127.0.0.1:8000", "http://user:pw@localhost:8000", "https://user@cyborgdb.internal",
    "http://127.0.0.1:8000#@evil", "http://127.0.0.1:8000/?@evil", "http://127.0.0.1:8000?x",
    " http://cyborgdb.internal ", "http://127.0.0.1 :8000", "http://127.0.0.1\t.evil:8000", "http://127.0.0.1:8000\n",
    "http://localhost\x00.evil.example", "http://l\u043ecalhost:8000", "http://127.0.0.1:99999", "http://127.0.0.1:80:80",
    "http:///127.0.0.1:8000", "http:127.0.0.1:8000",
])
def test_a_url_that_parsers_could_read_differently_is_refused(url):
    with pytest.raises(ValueError, match="INGEST_CYBORGDB_URL|refusing plain http"):
        check_service_url(url)


def test_the_accepted_url_is_what_the_sdk_is_given_in_lower_case():
    assert check_service_url("HTTP://LOCALHOST:8000") == "http://localhost:8000"
    assert check_service_url("HTTPS://CyborgDB.internal:443/api") == "https://cyborgdb.internal:443/api"
    assert check_service_url("http://[::1]:8000") == "http://[::1]:8000"


@pytest.fixture
def https_server_with_an_untrusted_certificate(tmp_path):
    """A TLS server on 127.0.0.1 whose self-signed certificate no trust store holds; counts HTTP requests."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"indexes": []}')

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_https_to_a_loopback_host_still_verifies_the_certificate(https_server_with_an_untrusted_certificate):
    # The SDK turns verification off by itself for "localhost"/"127.0.0.1" unless verify_ssl is given: then any
    # process that can listen on that port (or a proxy in front of it) would receive the index keys.
    url, requests = https_server_with_an_untrusted_certificate
    indexes = CyborgIndexes(url=url, api_key="not-sent", timeout_s=5, retry_budget_s=0.5)
    with pytest.raises(IndexUnavailable, match="TransportError"):
        indexes.exists("acme")
    assert requests == []  # the TLS handshake failed: no request (and no API key) reached the server
