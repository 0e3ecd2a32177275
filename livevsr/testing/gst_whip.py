"""A WHIP publisher built on GStreamer's webrtcbin: H.264 + Opus, as a third-party client would send.

Run with the system Python that has python3-gi (not livevsr's venv), as a child process:

    /usr/bin/python3 gst_whip.py URL TOKEN --seconds 10 [--width 320 --height 180]

It offers once ICE gathering is complete (WHIP without trickle), POSTs the offer with the Bearer
token, applies the answer, streams for ``--seconds`` and DELETEs its session. It prints one line
per milestone (``offer``, ``answer 201``, ``ice connected``, ``done``) so a test can tell where it
stopped. libnice never gathers loopback addresses: run it where it has a real interface (a test
runs it in a network namespace with a veth pair). Standard library and gi only, on purpose.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402


def say(line: str) -> None:
    print(line, flush=True)


class Publisher:
    def __init__(self, url: str, token: str, seconds: float, width: int, height: int) -> None:
        self.url, self.token, self.seconds = url, token, seconds
        self.location: str | None = None
        self.status = 1
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(
            "webrtcbin name=wb bundle-policy=max-bundle videotestsrc is-live=true pattern=ball "
            f"! video/x-raw,width={width},height={height},framerate=30/1 ! videoconvert "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=500 "
            "! video/x-h264,profile=constrained-baseline "
            "! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
            "! application/x-rtp,media=video,encoding-name=H264,payload=96 ! wb. "
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
            "! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! wb."
        )
        self.wb = self.pipeline.get_by_name("wb")
        self.wb.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.wb.connect("notify::ice-gathering-state", self._on_gathering)
        self.wb.connect("notify::ice-connection-state", self._on_ice_state)
        self.pipeline.get_bus().add_signal_watch()
        self.pipeline.get_bus().connect("message::error", self._on_error)
        self._offered = False
        self._negotiating = False

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return self.status

    def _on_error(self, bus: Gst.Bus, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        say(f"error {err.message} ({debug})")
        self.loop.quit()

    def _on_negotiation_needed(self, wb: Gst.Element) -> None:
        if self._negotiating:  # one offer: WHIP has no renegotiation
            return
        self._negotiating = True
        for t in range(2):  # both transceivers send only, as a publisher does
            wb.emit("get-transceiver", t).set_property(
                "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
            )
        wb.emit("create-offer", None, Gst.Promise.new_with_change_func(self._on_offer, None))

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            say(f"error no offer: {reply.to_string() if reply is not None else 'no reply'}")
            self.loop.quit()
            return
        self.wb.emit("set-local-description", offer, None)

    def _on_gathering(self, wb: Gst.Element, _pspec: object) -> None:
        if (
            wb.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE
            or self._offered
        ):
            return
        self._offered = True
        sdp = wb.get_property("local-description").sdp.as_text()
        say("offer")
        request = urllib.request.Request(
            self.url, data=sdp.encode(), method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer, status = resp.read().decode(), resp.status
                self.location = urllib.parse.urljoin(self.url, resp.headers["Location"])
        except urllib.error.HTTPError as exc:
            say(f"answer {exc.code} {exc.read().decode(errors='replace')}")
            self.loop.quit()
            return
        except OSError as exc:
            say(f"error POST failed: {exc}")
            self.loop.quit()
            return
        say(f"answer {status}")
        _res, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        wb.emit("set-remote-description", description, None)
        GLib.timeout_add(int(self.seconds * 1000), self._finish)

    def _on_ice_state(self, wb: Gst.Element, _pspec: object) -> None:
        state = wb.get_property("ice-connection-state")
        say(f"ice {state.value_nick}")
        if state == GstWebRTC.WebRTCICEConnectionState.FAILED:
            self.loop.quit()

    def _finish(self) -> bool:
        if self.location:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(self.location, method="DELETE"), timeout=5
                ).close()
            except OSError as exc:
                say(f"delete failed: {exc}")
        self.status = 0
        say("done")
        self.loop.quit()
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    args = parser.parse_args()
    Gst.init(None)
    return Publisher(args.url, args.token, args.seconds, args.width, args.height).run()


if __name__ == "__main__":
    sys.exit(main())
