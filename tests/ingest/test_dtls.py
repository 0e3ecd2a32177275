"""aiortc's DTLS (as livevsr configures it) completes a handshake with a peer holding an RSA certificate."""

from __future__ import annotations

import datetime

import pytest
from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80, RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

import livevsr.ingest.whip  # noqa: F401 - what the server imports; it applies livevsr.dtls


def rsa_context() -> SSL.Context:
    """A DTLS context like GStreamer's dtlsagent: a self-signed RSA 2048 certificate, DTLS-SRTP."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gst")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    return ctx


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Shuttle records between two memory-BIO connections until both finish (or one fails)."""
    client.set_connect_state()
    server.set_accept_state()
    done = {client: False, server: False}
    for _ in range(20):
        for me, peer in ((client, server), (server, client)):
            if not done[me]:
                try:
                    me.do_handshake()
                    done[me] = True
                except SSL.WantReadError:
                    pass
            try:
                peer.bio_write(me.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return
    raise AssertionError("DTLS handshake did not finish")


@pytest.mark.parametrize("aiortc_role", ["client", "server"])
def test_handshake_with_an_rsa_peer(aiortc_role: str) -> None:
    ours = SSL.Connection(RTCCertificate.generateCertificate()._create_ssl_context([SRTP_AES128_CM_SHA1_80]))
    theirs = SSL.Connection(rsa_context())
    client, server = (ours, theirs) if aiortc_role == "client" else (theirs, ours)
    handshake(client, server)
    assert ours.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    expected = "RSA" if aiortc_role == "client" else "ECDSA"  # the suite follows the server's key
    assert expected in ours.get_cipher_name()
