"""HTTP handlers fed bodies no browser sends: errors stay short JSON with a 4xx status, never a 500."""

from __future__ import annotations

import aiohttp
import pytest

from livevsr.app import App

OFFER = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"


@pytest.mark.parametrize("path", ["/whep/main", "/whip/main"])
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (OFFER + b"a=tool:\xff\xfe\r\n", "application/sdp"),  # not UTF-8
        (OFFER, "application/sdp; charset=no-such-charset"),  # a charset Python does not know
    ],
)
async def test_undecodable_offer_is_a_400(app: App, path: str, body: bytes, content_type: str) -> None:
    url = f"http://127.0.0.1:{app.http_port}{path}"
    headers = {"Content-Type": content_type, "Authorization": "Bearer k-main"}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        assert (await resp.json()) == {"error": "the SDP offer is not text in its charset (send UTF-8)"}
