"""Server TLS with certificate hot-reload and optional mutual TLS.

hypercorn builds its ``SSLContext`` once, at start-up. ``ReloadingTLS`` owns the
context instead (``server.RpcConfig.create_ssl_context`` hands it to hypercorn) and,
when the certificate or key files change, loads the new chain into that same context.
OpenSSL copies the certificate into each connection when the connection is created,
so new handshakes present the new certificate and open connections are unaffected.

A reload never leaves the live context half-updated: the files are first copied into a
private snapshot (so a rotation half-written by cert-manager cannot be read torn), the
snapshot is loaded into a scratch context to prove cert and key match, and only then
into the live one. A failed reload is logged and the old certificate stays in use.

mTLS: ``client_ca`` is the CA bundle client certificates must chain to;
``require_client_cert`` makes a certificate mandatory (otherwise optional, verified when
sent). CA reloads add the new CAs; OpenSSL cannot drop trusted CAs from a live context,
so removing a CA needs a restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

log = logging.getLogger("connect_proto._server.tls")

# hypercorn's defaults: forward-secret AEAD suites only; TLS 1.2+ (RFC 7540 9.2).
DEFAULT_CIPHERS = "ECDHE+AESGCM"
DEFAULT_ALPN: tuple[str, ...] = ("h2", "http/1.1")

FileStamp = tuple[int, int, int] | None  # (inode, size, mtime_ns); None when missing


def _stamp(path: str | None) -> FileStamp:
    if path is None:
        return None
    try:
        st = os.stat(path)  # follows symlinks: Kubernetes swaps a ..data symlink
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingTLS:
    """An ``ssl.SSLContext`` for a server, reloaded in place when its files change."""

    def __init__(
        self,
        certfile: str,
        keyfile: str,
        *,
        client_ca: str | None = None,
        require_client_cert: bool = False,
        alpn_protocols: Sequence[str] = DEFAULT_ALPN,
        ciphers: str = DEFAULT_CIPHERS,
    ) -> None:
        if require_client_cert and client_ca is None:
            raise ValueError("require_client_cert needs client_ca (the CA to verify against)")
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_ca = client_ca
        self._alpn = list(alpn_protocols)
        self._ciphers = ciphers
        self.context = self._new_context()
        if client_ca is not None:
            self.context.verify_mode = (
                ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
            )
        self._stamps = self._current_stamps()
        self._load(self.context)  # at start-up a bad file is an error, not a log line
        self.reloads = 0

    def _new_context(self) -> ssl.SSLContext:
        # Not create_default_context(CLIENT_AUTH) as hypercorn does: that trusts the
        # system CAs for client certificates, and mTLS must trust client_ca only.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers(self._ciphers)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION  # RFC 7540 9.2.1
        context.set_alpn_protocols(self._alpn)
        return context

    def _current_stamps(self) -> tuple[FileStamp, ...]:
        return (_stamp(self.certfile), _stamp(self.keyfile), _stamp(self.client_ca))

    def _load(self, live: ssl.SSLContext) -> None:
        snapshot = tempfile.mkdtemp(prefix="connect-tls-")  # mode 0700
        try:
            cert = shutil.copyfile(self.certfile, os.path.join(snapshot, "cert.pem"))
            key = shutil.copyfile(self.keyfile, os.path.join(snapshot, "key.pem"))
            ca = None
            if self.client_ca is not None:
                ca = shutil.copyfile(self.client_ca, os.path.join(snapshot, "ca.pem"))
            scratch = self._new_context()
            scratch.load_cert_chain(cert, key)  # raises on a mismatched or torn pair
            if ca is not None:
                scratch.load_verify_locations(ca)
            live.load_cert_chain(cert, key)
            if ca is not None:
                live.load_verify_locations(ca)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def reload_if_changed(self) -> bool:
        """Reload when any file changed since the last load; True if a new chain is live.

        Errors are logged and retried on the next call (the stamp is only advanced when
        the load succeeds), so a half-written rotation is picked up once it is complete.
        """
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return False
        try:
            self._load(self.context)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "TLS reload of %s failed, keeping the current certificate: %s", self.certfile, exc
            )
            return False
        self._stamps = stamps
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True

    async def watch(self, interval: float = 5.0) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await trio.sleep(interval)
            self.reload_if_changed()


def certificate_fingerprint(path: str | Path) -> str:
    """SHA-256 of the first certificate in a PEM file (for logs and tests)."""
    import hashlib

    pem = Path(path).read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[start:end])).hexdigest()


__all__ = ["DEFAULT_ALPN", "DEFAULT_CIPHERS", "ReloadingTLS", "certificate_fingerprint"]
