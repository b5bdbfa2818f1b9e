"""The coordinator's public port: a forwarder that serves Flower's Fleet API and nothing else.

Flower 1.42's SuperLink serves three APIs on one HTTP(S) port: Fleet (``/v1/fleet/``,
what SuperNodes call), Control (``/v1/control/``, what ``flwr ls``/``flwr run`` call)
and Runtime (``/v1/runtime/``, what its own ServerApp processes call). The open-source
Control API has no authentication: whoever reaches it can list, start and stop runs,
and a started run executes ClientApp code at every site. So the coordinator runs the
SuperLink on loopback only and puts this gateway on the public address; the Control
and Runtime APIs stay reachable from the coordinator's machine alone.

What passes: ``POST /v1/fleet/<method>`` (every call of Flower's ``FleetHttpClient``,
protobuf over HTTP/1.1, no other path; checked in flwr 1.42.0
``flwr/supernode/fleet_http_client.py``) and ``GET /health`` (answered here, after
asking the SuperLink). Everything else is refused here, before it reaches the
SuperLink: the Control and Runtime APIs with 403, any other path or method with 404/405.
Bodies are streamed both ways, chunk by chunk, so a large model is never held whole in
this process (Flower sends arrays in 5 MB objects, one request each, and the SuperLink
itself reads each request whole).

Built on what Flower already installs: Starlette for routing and streaming responses,
httpx for the upstream connection, uvicorn to serve (and terminate TLS). Written by
hand: the allow-list, the hop-by-hop header filter, the body size cap and the ``main``
below. SuperNode authentication passes through untouched: it is carried in signed
request headers that the SuperLink checks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("umedpt_fl.gateway")

FLEET_PREFIX = "/v1/fleet/"
FLEET_METHOD = re.compile(r"^[a-z][a-z0-9-]{0,63}$")  # e.g. push-object, pull-messages
INTERNAL_PREFIXES = ("/v1/control/", "/v1/runtime/")  # refused with 403, named
MAX_BODY_BYTES = 256 * 1024 * 1024  # far above Flower's 5 MB objects; bounds abuse
# RFC 9110 section 7.6.1, plus what must be set per hop (host, length of a re-chunked body).
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "forwarded", "x-forwarded-for",
     "x-forwarded-proto", "x-real-ip")
)  # fmt: skip
_NOT_FORWARDED_BACK = frozenset(("date", "server"))  # uvicorn sets its own


@dataclass(frozen=True)
class GatewayOptions:
    """Where the gateway listens and where it forwards to."""

    host: str
    port: int
    upstream: str  # e.g. https://127.0.0.1:41234, the SuperLink on loopback
    upstream_ca: Path | None = None  # the CA the SuperLink's certificate is signed by
    certfile: Path | None = None  # the coordinator's public certificate (None: plain HTTP)
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("the gateway needs both a certificate and its key, or neither")
        if self.upstream.startswith("https://") and self.upstream_ca is None:
            raise ValueError("an https upstream needs the CA its certificate is signed by")

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def command_args(self) -> list[str]:
        """Arguments for ``python -m server.gateway`` (see :func:`main`)."""
        args = ["--host", self.host, "--port", str(self.port), "--upstream", self.upstream]
        if self.upstream_ca:
            args += ["--upstream-ca", str(self.upstream_ca)]
        if self.certfile and self.keyfile:
            args += ["--certfile", str(self.certfile), "--keyfile", str(self.keyfile)]
        return args


class BodyTooLarge(Exception):
    """A request body passed :data:`MAX_BODY_BYTES` while it streamed."""


def _request_headers(request: Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if request.client:  # the SuperLink's uvicorn trusts these from loopback, for its logs
        headers["x-forwarded-for"] = request.client.host
    headers["x-forwarded-proto"] = request.url.scheme
    return headers


def _response_headers(response: httpx.Response) -> dict[str, str]:
    skip = HOP_BY_HOP | _NOT_FORWARDED_BACK
    return {k: v for k, v in response.headers.items() if k.lower() not in skip}


async def _capped(request: Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as sent (no decoding); the connection is released however it ends,
    a client that hangs up mid-way included."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


def _refusal(request: Request, status: int, reason: str) -> Response:
    client = request.client.host if request.client else "?"
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, reason)
    return JSONResponse({"detail": reason}, status_code=status)


def create_app(
    upstream: str,
    *,
    verify: ssl.SSLContext | bool = True,
    max_body: int = MAX_BODY_BYTES,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The gateway as an ASGI app forwarding the Fleet API to ``upstream``.

    ``transport`` replaces the network (tests hand in an ``httpx.ASGITransport``).
    """
    upstream = upstream.rstrip("/")
    clients: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No read deadline of our own: the SuperNode sets one per call, and a large
        # object may take long to stream. Connections are pooled to the one upstream.
        timeout = httpx.Timeout(30.0, read=None, write=None)
        async with httpx.AsyncClient(
            verify=verify, timeout=timeout, trust_env=False, transport=transport
        ) as client:
            clients["upstream"] = client
            yield

    async def fleet(request: Request) -> Response:
        method = request.path_params["method"]
        if not FLEET_METHOD.fullmatch(method) or request.url.query:
            return _refusal(request, 404, "not a Fleet API call")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return _refusal(request, 413, f"request body over {max_body} bytes")
        client = clients["upstream"]
        outgoing = client.build_request(
            "POST",
            f"{upstream}{FLEET_PREFIX}{method}",
            headers=_request_headers(request),
            content=_capped(request, max_body),
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except BodyTooLarge:
            return _refusal(request, 413, f"request body over {max_body} bytes")
        except ClientDisconnect:
            return Response(status_code=499)
        except httpx.TimeoutException:
            return JSONResponse({"detail": "the coordinator did not answer in time"}, 504)
        except httpx.HTTPError as exc:
            log.warning("upstream %s unreachable: %s", upstream, exc)
            return JSONResponse({"detail": "the coordinator is not ready"}, 502)
        return StreamingResponse(
            _relay(answer), status_code=answer.status_code, headers=_response_headers(answer)
        )

    async def health(request: Request) -> Response:
        try:
            answer = await clients["upstream"].get(f"{upstream}/health", timeout=5.0)
        except httpx.HTTPError:
            return Response(status_code=503)
        return Response(status_code=200 if answer.status_code == 200 else 503)

    async def refuse(request: Request) -> Response:
        path = request.url.path
        if path.startswith(INTERNAL_PREFIXES):
            api = path.split("/")[2].capitalize()
            return _refusal(
                request,
                403,
                f"the {api} API is not served on this port; it is reachable only on the "
                "coordinator's own machine",
            )
        return _refusal(request, 404, "only the Fleet API (/v1/fleet/) is served on this port")

    every_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route(FLEET_PREFIX + "{method}", fleet, methods=["POST"]),
            Route("/health", health, methods=["GET", "HEAD"]),
            Route("/{path:path}", refuse, methods=every_method),
        ],
        lifespan=lifespan,
    )


def upstream_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Trust only the CA the SuperLink's certificate comes from (never the system's)."""
    if ca_file is None:
        return False
    return ssl.create_default_context(cafile=str(ca_file))


def serve(options: GatewayOptions) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's own handlers); blocks."""
    app = create_app(options.upstream, verify=upstream_verify(options.upstream_ca))
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        ssl_certfile=str(options.certfile) if options.certfile else None,
        ssl_keyfile=str(options.keyfile) if options.keyfile else None,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # we are the edge: the client's own headers are not trusted
        timeout_graceful_shutdown=3,
        h11_max_incomplete_event_size=64 * 1024,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m server.gateway``: the process the coordinator starts and supervises."""
    parser = argparse.ArgumentParser(prog="python -m server.gateway", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-ca", type=Path)
    parser.add_argument("--certfile", type=Path)
    parser.add_argument("--keyfile", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded call
    try:
        options = GatewayOptions(
            host=args.host, port=args.port, upstream=args.upstream, upstream_ca=args.upstream_ca,
            certfile=args.certfile, keyfile=args.keyfile,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    scheme = "https" if options.tls else "http"
    log.info("serving the Fleet API on %s://%s:%d, forwarding to %s", scheme, options.host,
             options.port, options.upstream)  # fmt: skip
    serve(options)


if __name__ == "__main__":
    main()
