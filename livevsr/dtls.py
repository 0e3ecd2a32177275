"""Let aiortc's DTLS talk to peers whose certificate is RSA (GStreamer's webrtcbin, libwebrtc forks).

aiortc 1.x builds every DTLS context with a cipher list of ECDHE-ECDSA suites only. Those suites
require the DTLS *server's* certificate to be ECDSA. When a publisher offers ``a=setup:actpass``,
aiortc answers ``active`` and becomes the DTLS client, so the publisher is the server; if its
certificate is RSA (GStreamer generates RSA keys), no offered suite fits and the handshake fails
with "no shared cipher": the publish never starts.

The fix appends the matching ECDHE-RSA suites to the list, and changes nothing else: the context
is still built by aiortc's own ``RTCCertificate._create_ssl_context``; we wrap it and call
``set_cipher_list`` again on what it returns. Wrapping (rather than copying the method) keeps
aiortc's certificate, verification and SRTP settings whatever a later aiortc version does with
them. Our own certificate stays ECDSA, so when aiortc is the DTLS server it still picks an ECDSA
suite; the RSA suites only matter where the peer's certificate is RSA. Importing this module
applies the patch once.
"""

from __future__ import annotations

from aiortc.rtcdtlstransport import RTCCertificate

# Forward-secret AEAD first, as aiortc orders its own; the CBC ones for older DTLS 1.0 peers.
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)


def _patch() -> None:
    original = RTCCertificate._create_ssl_context
    if getattr(original, "_livevsr_rsa_suites", False):
        return

    def create_ssl_context(self: RTCCertificate, *args: object, **kwargs: object):  # noqa: ANN202
        ctx = original(self, *args, **kwargs)
        ctx.set_cipher_list(CIPHERS)
        return ctx

    create_ssl_context._livevsr_rsa_suites = True  # type: ignore[attr-defined]
    RTCCertificate._create_ssl_context = create_ssl_context  # type: ignore[method-assign]


_patch()
