"""The aiohttp application: web viewer, WHEP endpoints, JSON API, Prometheus metrics, health."""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livevsr import __version__
from livevsr.config import HTTPConfig
from livevsr.errors import IngestError
from livevsr.ingest import whip as whip_ingest
from livevsr.ingest.whip import WhipServer
from livevsr.limits import Defences
from livevsr.pipeline.manager import StreamManager
from livevsr.publish.whep import WhepServer
from livevsr.resources import data_dir
from livevsr.sdp import OfferError
from livevsr.server.guard import HttpGuard
from livevsr.telemetry.metrics import LoopLagMonitor, Metrics

log = logging.getLogger(__name__)

WEB_DIR = data_dir("web")
MAX_SDP_BYTES = 64 * 1024

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=CORS_HEADERS)


def _bearer_ok(request: web.Request, token: str) -> bool:
    """True if no token is configured, or the request carries it (Bearer header or ?token=)."""
    if not token:
        return True
    given = whip_ingest.bearer_token(request.headers.get("Authorization")) or request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def _read_offer(request: web.Request, timeout_s: float) -> str | web.Response:
    """The SDP offer of a WHIP/WHEP POST, or the error response to send instead."""
    if request.content_type != "application/sdp":
        return _error(415, "send the SDP offer with Content-Type: application/sdp")
    try:
        async with asyncio.timeout(timeout_s):  # a body trickled in byte by byte must not hold the socket
            return await request.text()
    except TimeoutError:
        return _error(408, f"the SDP offer did not arrive within {timeout_s:g} s")
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "SDP offer too large")
    except (UnicodeDecodeError, LookupError):  # not UTF-8, or an unknown charset parameter
        return _error(400, "the SDP offer is not text in its charset (send UTF-8)")


def _created(answer: str, location: str) -> web.Response:
    """201 with the SDP answer and the session resource, as WHIP and WHEP both require."""
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={**CORS_HEADERS, "Location": location},
    )


def _unauthorized() -> web.Response:
    # Generic on purpose: never say which part was wrong.
    return web.json_response(
        {"error": "unauthorized"}, status=401, headers={**CORS_HEADERS, "WWW-Authenticate": "Bearer"}
    )


def build_app(
    manager: StreamManager,
    whep: WhepServer,
    metrics: Metrics,
    ready: dict,
    whip: WhipServer | None = None,
    *,
    viewer_token: str = "",
    admin_token: str = "",
    ingest: dict | None = None,
    loop_lag: LoopLagMonitor | None = None,
    defences: Defences | None = None,
    guard: HttpGuard | None = None,
) -> web.Application:
    """``ingest``: {"rtmp_port": int, "rtmp_app": str}, filled in once the RTMP server listens.
    ``guard``: the connection guard whose middleware marks when a request's header is complete."""
    ingest = ingest if ingest is not None else {}
    limits = defences if defences is not None else Defences.from_config(HTTPConfig())
    middlewares = [guard.middleware] if guard is not None else []
    app = web.Application(client_max_size=MAX_SDP_BYTES, middlewares=middlewares)

    def too_many(request: web.Request, what: str) -> web.Response | None:
        """429 when this address creates sessions faster than http.sessions_per_ip_per_s allows."""
        remote = request.remote or "unknown"
        if limits.sessions.allow(remote):
            return None
        limits.summary.event(
            logging.WARNING, f"{what} refused: too many requests (http.sessions_per_ip_per_s)", remote,
            f"HTTP: {what} from {remote} refused: more than {limits.sessions.rate_per_s:g}/s "
            "(http.sessions_per_ip_per_s)",
        )  # fmt: skip
        retry = max(1, round(limits.sessions.retry_after_s(remote) + 0.5))
        return web.json_response(
            {"error": f"too many requests from {remote}; retry in {retry} s"}, status=429,
            headers={**CORS_HEADERS, "Retry-After": str(retry)},
        )  # fmt: skip

    async def refuse_key(request: web.Request, what: str, response: web.Response) -> web.Response:
        """A wrong key or token: logged once per address and second, refused after a growing delay."""
        remote = request.remote or "unknown"
        kind = f"{what} refused: bad or missing token"
        first = f"{what} refused from {remote}: bad or missing token"
        limits.summary.event(logging.WARNING, kind, remote, first)
        delay = limits.key_failures.failed(remote)
        if delay:
            await asyncio.sleep(delay)
        return response

    async def index(request: web.Request) -> web.StreamResponse:
        page = WEB_DIR / "index.html"
        if not page.exists():
            return web.Response(
                text="livevsr is running; the web viewer is not installed", content_type="text/plain"
            )
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def view(request: web.Request) -> web.StreamResponse:
        if manager.get(request.match_info["name"]) is None:
            return _error(404, "no such stream")
        return await index(request)

    async def whep_post(request: web.Request) -> web.Response:
        if (refused := too_many(request, "WHEP session")) is not None:
            return refused
        if not _bearer_ok(request, viewer_token):
            return await refuse_key(request, "WHEP viewer", _unauthorized())
        stream = manager.get(request.match_info["name"])
        if stream is None:
            return _error(404, "no such stream")
        rendition = "source" if request.path.endswith("/source") else "upscaled"
        offer = await _read_offer(request, limits.body_timeout_s)
        if isinstance(offer, web.Response):
            return offer
        try:
            session, answer = await whep.create(stream, rendition, offer, request.remote or "unknown")
        except OfferError as exc:
            return _error(400, str(exc))
        except OverflowError as exc:
            return _error(503, str(exc))
        return _created(answer, f"/whep/{stream.name}/session/{session.id}")

    async def whep_delete(request: web.Request) -> web.Response:
        if await whep.close(request.match_info["session"], "viewer sent DELETE"):
            return web.Response(status=200, headers=CORS_HEADERS)
        return _error(404, "no such WHEP session")

    async def whep_patch(request: web.Request) -> web.Response:
        # Answers are complete (aiortc gathers every candidate first), so trickle ICE is not needed.
        return web.Response(status=405, headers={**CORS_HEADERS, "Allow": "DELETE"})

    async def whip_post(request: web.Request) -> web.Response:
        assert whip is not None
        if (refused := too_many(request, "WHIP publish")) is not None:
            return refused
        token = whip_ingest.bearer_token(request.headers.get("Authorization"))
        offer = await _read_offer(request, limits.body_timeout_s)
        if isinstance(offer, web.Response):
            return offer
        try:
            session, answer = await whip.create(
                request.match_info.get("name"), token, offer, request.remote or "unknown"
            )
        except whip_ingest.AuthError:
            return await refuse_key(request, "WHIP publish", web.json_response(
                {"error": "unauthorized: set the stream key as the Bearer token"}, status=401,
                headers={**CORS_HEADERS, "WWW-Authenticate": "Bearer"},
            ))  # fmt: skip
        except whip_ingest.NoSuchStream:
            return _error(404, "no such stream")
        except OfferError as exc:
            return _error(400, str(exc))
        except IngestError as exc:
            return _error(503, str(exc))
        return _created(answer, f"/whip/{session.stream_name}/session/{session.id}")

    async def whip_delete(request: web.Request) -> web.Response:
        assert whip is not None
        if await whip.close(request.match_info["session"], "publisher sent DELETE"):
            return web.Response(status=200, headers=CORS_HEADERS)
        return _error(404, "no such WHIP session")

    async def options(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)

    async def api_kick(request: web.Request) -> web.Response:
        if not admin_token:
            return _error(403, "the control API is disabled; set http.admin_token to enable it")
        if (refused := too_many(request, "kick")) is not None:
            return refused
        if not _bearer_ok(request, admin_token):
            return await refuse_key(request, "kick", _unauthorized())
        stream = manager.get(request.match_info["name"])
        if stream is None:
            return _error(404, "no such stream")
        if stream.session is None:
            return _error(409, "the stream has no publisher")
        stream.session.close("kicked by an operator")
        log.info("[%s] publisher kicked by an operator (%s)", stream.name, request.remote)
        return web.json_response({"kicked": stream.name}, headers=CORS_HEADERS)

    async def api_streams(request: web.Request) -> web.Response:
        if not _bearer_ok(request, viewer_token):
            return await refuse_key(request, "stream list", _unauthorized())
        streams = [s.snapshot() for s in manager.streams.values()]
        if ingest.get("rtmp_port"):
            # The host the viewer reached us by is the host OBS should use (the key is never shown).
            rtmp_url = f"rtmp://{request.url.host}:{ingest['rtmp_port']}/{ingest['rtmp_app']}"
            for s in streams:
                s["ingest"] = {"rtmp_url": rtmp_url}
        return web.json_response({"version": __version__, "streams": streams}, headers=CORS_HEADERS)

    async def metrics_handler(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        lag = loop_lag.percentiles_ms() if loop_lag is not None else None
        return web.json_response({"status": "ok", "event_loop_lag_ms": lag})

    async def readyz(request: web.Request) -> web.Response:
        ok = all(ready.values())
        return web.json_response({"ready": ok, **ready}, status=200 if ok else 503)

    app.router.add_get("/", index)
    app.router.add_get("/view/{name}", view)
    if WEB_DIR.exists():
        app.router.add_static("/web/", WEB_DIR, show_index=False)
    for suffix in ("", "/source"):
        app.router.add_post("/whep/{name}" + suffix, whep_post)
        app.router.add_route("OPTIONS", "/whep/{name}" + suffix, options)
    app.router.add_delete("/whep/{name}/session/{session}", whep_delete)
    app.router.add_patch("/whep/{name}/session/{session}", whep_patch)
    app.router.add_route("OPTIONS", "/whep/{name}/session/{session}", options)
    if whip is not None:
        for path in ("/whip", "/whip/{name}"):
            app.router.add_post(path, whip_post)
            app.router.add_route("OPTIONS", path, options)
        app.router.add_delete("/whip/{name}/session/{session}", whip_delete)
        app.router.add_patch("/whip/{name}/session/{session}", whep_patch)  # 405: no trickle ICE
        app.router.add_route("OPTIONS", "/whip/{name}/session/{session}", options)
    app.router.add_get("/api/streams", api_streams)
    app.router.add_post("/api/streams/{name}/kick", api_kick)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
