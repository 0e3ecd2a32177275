"""A WHIP publisher built on FFmpeg's ``whip`` muxer (through PyAV's bundled FFmpeg 8): H.264 + Opus.

    python -m livevsr.testing.ffmpeg_whip URL TOKEN --seconds 10 [--width 320 --height 180]

FFmpeg's WHIP muxer always takes the DTLS server role (``a=setup:passive``), so its certificate
decides the handshake. The GnuTLS build that PyAV ships generates a self-signed ECDSA certificate on
the P-224 curve (secp224r1); the OpenSSL that aiortc uses (cryptography's, 4.x) no longer supports
secp224r1 as a TLS group, and a DTLS 1.2 client refuses a server certificate on a curve it does not
support: the handshake ends with an alert right after the server's Certificate. Nothing on the
receiving side can accept that key, so this publisher hands FFmpeg a P-256 certificate
(``cert_file``/``key_file``, the same options an ``ffmpeg -f whip`` command line takes), which
works; ``--ffmpeg-certificate`` keeps FFmpeg's own to show the failure.

A child process on purpose: the muxer runs its HTTP, ICE and DTLS handshakes inside the first
``mux`` call while holding the GIL, which would stall an asyncio server in the same process.
Prints ``connected`` once the handshakes are done and ``done`` at the end (after its DELETE).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from livevsr.testing.publisher import AUDIO_RATE, _tone, synthetic_frame

FPS = 30
OPUS_FRAME = 960  # 20 ms at 48 kHz


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate and key as PEM files (what browsers use for DTLS)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "livevsr-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def publish(url: str, token: str, seconds: float, width: int, height: int, certificate: tuple | None) -> int:
    """Stream ``seconds`` of test pattern and tone in real time; returns the video frames sent."""
    options = {"authorization": token, "handshake_timeout": "10000"}
    if certificate is not None:
        options.update(cert_file=str(certificate[0]), key_file=str(certificate[1]))
    container = av.open(url, "w", format="whip", options=options)
    sent = 0
    try:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = FPS
        video.codec_context.max_b_frames = 0
        # WebRTC wants no B-frames and SPS/PPS with every keyframe; baseline is what every receiver takes.
        video.codec_context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": f"repeat-headers=1:bframes=0:keyint={FPS}:min-keyint={FPS}",
        }
        sound = container.add_stream("libopus", rate=AUDIO_RATE, layout="stereo")
        sound.codec_context.bit_rate = 64_000
        audio_samples = 0
        start = time.monotonic()
        for index in range(round(seconds * FPS)):
            delay = start + index / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = av.VideoFrame.from_ndarray(synthetic_frame(width, height, index), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
            if sent == 0:
                print("connected", flush=True)  # the first mux ran the WHIP, ICE and DTLS handshakes
            sent += 1
            # Audio up to this video frame's end: the muxer interleaves, so both must keep coming.
            while audio_samples < (index + 1) * AUDIO_RATE // FPS:
                tone = _tone(audio_samples, OPUS_FRAME)
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = AUDIO_RATE, audio_samples
                chunk.time_base = Fraction(1, AUDIO_RATE)
                container.mux(sound.encode(chunk))
                audio_samples += OPUS_FRAME
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    finally:
        container.close()  # sends the DELETE
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument(
        "--ffmpeg-certificate", action="store_true", help="keep FFmpeg's own (P-224) DTLS certificate"
    )
    args = parser.parse_args()
    if "whip" not in av.formats_available:
        print("error: this FFmpeg has no whip muxer", flush=True)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        certificate = None if args.ffmpeg_certificate else write_certificate(Path(folder))
        try:
            sent = publish(args.url, args.token, args.seconds, args.width, args.height, certificate)
        except av.error.FFmpegError as exc:
            print(f"error {exc}", flush=True)
            return 1
    print(f"done {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
