"""Session outputs that record what reached a publish session."""

from __future__ import annotations

from livevsr.ingest.base import AudioPacket


class AudioTap:
    """Our own seam (a SessionOutput): what audio reached the session(s) it is attached to."""

    def __init__(self) -> None:
        self.configs: list[tuple[str, int, int]] = []
        self.packets: list[AudioPacket] = []

    def video(self, rendition: str, packet: object) -> None:
        pass

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        self.configs.append((codec, sample_rate, channels))

    def audio(self, packet: AudioPacket) -> None:
        self.packets.append(packet)

    def close(self) -> None:
        pass
