"""The gateway's allow-list: the Fleet API passes, streamed and unchanged; nothing else does.

The gateway runs in process (Starlette's TestClient) in front of a recording fake
SuperLink reached through httpx's ASGI transport: no sockets, no Flower.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from server.gateway import create_app


class FakeSuperLink:
    """Answers every path with what it received; remembers each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []

        async def record(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            self.calls.append((request.method, request.url.path, headers, body))
            return Response(
                body[::-1], status_code=200,
                headers={"content-type": "application/protobuf", "x-upstream": "yes"},
            )  # fmt: skip

        self.app = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])


@pytest.fixture
def gateway():
    upstream = FakeSuperLink()
    app = create_app(
        "http://superlink.test", transport=httpx.ASGITransport(upstream.app), max_body=1000
    )
    with TestClient(app, base_url="https://coordinator.test") as client:
        yield client, upstream


def test_fleet_calls_pass_with_body_and_auth_headers_unchanged(gateway) -> None:
    client, upstream = gateway
    signed = {"flwr-public-key": "cGs=", "flwr-signature": "c2ln", "flwr-timestamp": "now"}
    answer = client.post(
        "/v1/fleet/push-object", content=b"\x00\x01payload",
        headers={**signed, "content-type": "application/protobuf", "x-forwarded-for": "1.2.3.4"},
    )  # fmt: skip
    assert answer.status_code == 200 and answer.content == b"daolyap\x01\x00"
    assert answer.headers["x-upstream"] == "yes"
    method, path, headers, body = upstream.calls[-1]
    assert (method, path, body) == ("POST", "/v1/fleet/push-object", b"\x00\x01payload")
    assert {k: headers[k] for k in signed} == signed
    assert headers["x-forwarded-for"] == "testclient"  # a client cannot spoof its address


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/control/list-runs", 403),
        ("POST", "/v1/control/start-run", 403),
        ("POST", "/v1/control/register-node", 403),
        ("POST", "/v1/runtime/pull-messages", 403),
        ("GET", "/docs", 404),
        ("GET", "/openapi.json", 404),
        ("GET", "/v1/fleet/get-run", 404),
        ("POST", "/v1/fleet/%2e%2e%2fcontrol%2fstart-run", 404),
        ("POST", "/v1/fleet/Get_Run", 404),
        ("POST", "/v1/fleet/get-run?x=1", 404),
        ("POST", "/v1/fleet/push-object%0A", 404),  # '$' would match before a final newline
    ],
)
def test_everything_but_the_fleet_api_is_refused_before_the_superlink(
    gateway, method: str, path: str, status: int
) -> None:
    client, upstream = gateway
    answer = client.request(method, path, content=b"x" if method == "POST" else None)
    assert answer.status_code == status
    assert upstream.calls == []
    if status == 403:
        assert "not served on this port" in answer.json()["detail"]


def test_a_body_over_the_cap_is_refused(gateway) -> None:
    client, upstream = gateway
    assert client.post("/v1/fleet/push-object", content=b"x" * 1001).status_code == 413

    def chunks():  # no content-length: the cap applies while streaming
        for _ in range(11):
            yield b"x" * 100

    assert client.post("/v1/fleet/push-object", content=chunks()).status_code == 413
    assert upstream.calls == []


def test_health_asks_the_superlink(gateway) -> None:
    client, upstream = gateway
    assert client.get("/health").status_code == 200
    assert upstream.calls[-1][:2] == ("GET", "/health")


def test_an_unreachable_superlink_is_a_502() -> None:
    app = create_app("http://127.0.0.1:9")  # nothing listens on the discard port
    with TestClient(app) as client:
        assert client.post("/v1/fleet/pull-messages", content=b"x").status_code == 502
        assert client.get("/health").status_code == 503
