"""TLS over real sockets: serving, mutual TLS, and certificate reload without a restart."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._server.serve import RpcConfig, make_config, serve
from connect_proto._server.tls import ReloadingTLS

SVC = "/testsvc.v1.TestService"


def write_pair(cert: trustme.LeafCert, directory: Path) -> tuple[str, str]:
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def serial_of(cert: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


async def peer_serial(port: int, context: ssl.SSLContext) -> int:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
    finally:
        await stream.aclose()
    return x509.load_der_x509_certificate(der).serial_number


async def get(url: str, context: ssl.SSLContext) -> httpx.Response:
    async with httpx.AsyncClient(http2=True, verify=context) as client:
        return await client.post(
            f"{url}{SVC}/Get", content=b'{"name":"t"}', headers={"content-type": "application/json"}
        )


async def wait_for_serial(port: int, context: ssl.SSLContext, serial: int) -> None:
    """Until new connections present ``serial`` (the watcher polls every 50 ms)."""
    for _ in range(100):
        if await peer_serial(port, context) == serial:
            return
        await trio.sleep(0.05)
    raise AssertionError("the new certificate never reached new connections")


def write_cert_only(cert: trustme.LeafCert, certfile: str) -> None:
    Path(certfile).write_bytes(cert.cert_chain_pems[0].bytes())


def app() -> ConnectApp:
    return ConnectApp([(TEST_SERVICE, TestServiceImpl())])


async def test_tls_serves_h2_through_our_context(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile, keyfile = write_pair(ca.issue_cert("127.0.0.1"), tmp_path)
    config = make_config("127.0.0.1", 0, certfile=certfile, keyfile=keyfile)
    assert isinstance(config, RpcConfig) and config.tls is not None
    assert config.create_ssl_context() is config.tls.context
    port = await nursery.start(serve, app(), config)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    response = await get(f"https://127.0.0.1:{port}", client)
    assert response.http_version == "HTTP/2"
    assert response.json() == {"greeting": "Hello, t!"}
    nursery.cancel_scope.cancel()


async def test_mutual_tls(nursery: trio.Nursery, tmp_path: Path) -> None:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    certfile, keyfile = write_pair(server_ca.issue_cert("127.0.0.1"), tmp_path)
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    config = make_config(
        "127.0.0.1",
        0,
        certfile=certfile,
        keyfile=keyfile,
        ca_certs=str(client_ca_file),
        require_client_cert=True,
    )
    port = await nursery.start(serve, app(), config)
    url = f"https://127.0.0.1:{port}"

    def client_context(issuer: trustme.CA | None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        server_ca.configure_trust(context)
        if issuer is not None:
            issuer.issue_cert("client@example.org").configure_cert(context)
        return context

    with pytest.raises(httpx.TransportError):
        await get(url, client_context(None))
    with pytest.raises(httpx.TransportError):
        await get(url, client_context(other_ca))
    response = await get(url, client_context(client_ca))
    assert response.json() == {"greeting": "Hello, t!"}
    nursery.cancel_scope.cancel()


def test_mtls_configuration_errors(tmp_path: Path) -> None:
    certfile, keyfile = write_pair(trustme.CA().issue_cert("127.0.0.1"), tmp_path)
    with pytest.raises(ValueError, match="client_ca"):
        ReloadingTLS(certfile, keyfile, require_client_cert=True)
    with pytest.raises(ValueError, match="need TLS"):
        make_config(require_client_cert=True)
    other = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    with pytest.raises(ssl.SSLError):  # bad files fail at start-up, not at first handshake
        ReloadingTLS(certfile, str(other))


async def test_certificate_reload_reaches_new_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    first, second, third = (ca.issue_cert("127.0.0.1") for _ in range(3))
    certfile, keyfile = write_pair(first, tmp_path)
    config = make_config(
        "127.0.0.1", 0, certfile=certfile, keyfile=keyfile, tls_reload_interval=0.05
    )
    port = await nursery.start(serve, app(), config)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    assert await peer_serial(port, client) == serial_of(first)

    async with httpx.AsyncClient(http2=True, verify=client) as kept:
        url = f"https://127.0.0.1:{port}{SVC}/Get"
        headers = {"content-type": "application/json"}
        assert (await kept.post(url, content=b"{}", headers=headers)).status_code == 200

        write_pair(second, tmp_path)
        await wait_for_serial(port, client, serial_of(second))
        assert config.tls is not None and config.tls.reloads == 1
        # The connection opened before the rotation keeps working.
        assert (await kept.post(url, content=b"{}", headers=headers)).status_code == 200

    # A torn rotation (new certificate, old key) is refused; the last good pair stays.
    write_cert_only(third, certfile)
    assert config.tls.reload_if_changed() is False
    assert await peer_serial(port, client) == serial_of(second)
    # Once the key arrives, the next poll picks the pair up.
    third.private_key_pem.write_to_path(keyfile)
    await wait_for_serial(port, client, serial_of(third))
    nursery.cancel_scope.cancel()
