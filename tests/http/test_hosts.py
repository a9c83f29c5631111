"""Without a token, only requests for this machine's names, and no cross-site ones (``http.hosts``).

The attack: a web page the user opens rebinds its own domain to 127.0.0.1
and reads the daemon (DNS rebinding), or has the browser send cross-site
GETs that subscribe conids. Both carry a ``Host``, ``Origin`` or
``Sec-Fetch-Site`` the browser sets and the page cannot change. Every test
sends what the browser would, over a real socket.
"""

from __future__ import annotations

import httpx
import pytest
import trio
from serving import address, start_service

from bezant_trio.config import ConfigError, config_from_mapping
from bezant_trio.http.hosts import HostPolicy
from bezant_trio.wants import Wants
from h2raw import RawH2
from helpers import SSL_CONTEXT

ATTACKER = "attacker.example"


def _allows(policy: HostPolicy, **headers: str) -> bool:
    return policy.allows([(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()])


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"host": "localhost:8080"}, True),
        ({"host": "LOCALHOST"}, True),
        ({"host": "127.0.0.1:1"}, True),
        ({"host": "[::1]:8080"}, True),
        ({"host": "[::1]"}, True),
        ({}, True),  # HTTP/1.0 without Host: no browser sends that
        ({"host": ""}, True),  # HTTP/2 without :authority
        ({"host": f"{ATTACKER}:8080"}, False),
        ({"host": ATTACKER}, False),
        ({"host": "localhost.attacker.example"}, False),
        ({"host": "127.0.0.2"}, False),
        ({"host": "localhost:"}, False),
        ({"host": "localhost:80:80"}, False),
        ({"host": "[::1]x"}, False),
        ({"host": "[::1"}, False),
        ({"host": "l\u00f6calhost"}, False),
        ({"host": "localhost", "origin": "http://localhost:3000"}, True),
        ({"host": "localhost", "origin": "https://127.0.0.1"}, True),
        ({"host": "localhost", "origin": f"http://{ATTACKER}"}, False),
        ({"host": "localhost", "origin": "null"}, False),
        ({"host": "localhost", "origin": "file://"}, False),
        ({"host": "localhost", "origin": "http://localhost/x"}, False),
        ({"host": "localhost", "sec_fetch_site": "same-origin"}, True),
        ({"host": "localhost", "sec_fetch_site": "none"}, True),
        ({"host": "localhost", "sec_fetch_site": "same-site"}, False),
        ({"host": "localhost", "sec_fetch_site": "cross-site"}, False),
    ],
)
def test_the_policy_allows_loopback_names_and_same_origin_requests_only(
    headers: dict[str, str], allowed: bool
) -> None:
    assert _allows(HostPolicy.build(), **headers) is allowed


def test_allowed_hosts_the_bind_host_and_the_wildcard() -> None:
    policy = HostPolicy.build(["Bezant.Local", "[fd00::5]"], bind_host="192.168.1.5")
    assert _allows(policy, host="bezant.local:8080")
    assert _allows(policy, host="[FD00::5]:8080")
    assert _allows(policy, host="192.168.1.5:8080")
    assert _allows(policy, host="localhost")
    assert not _allows(policy, host=ATTACKER)
    assert _allows(HostPolicy.build(bind_host="::1"), host="[::1]")
    wildcard = HostPolicy.build(["*"])
    assert _allows(wildcard, host=ATTACKER, origin=f"http://{ATTACKER}")
    assert not _allows(wildcard, host=ATTACKER, sec_fetch_site="cross-site")


@pytest.mark.parametrize(
    "value", ["bezant.local:8080", "http://bezant.local", "", "a b", 5, "[::1", "::1", "x" * 300]
)
def test_a_bad_allowed_host_is_a_config_error_naming_the_entry(value: object) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_mapping({"http": {"allowed_hosts": ["ok.local", value]}}, env={})
    assert "http.allowed_hosts[1]" in str(error.value) and "\n" not in str(error.value)


async def test_a_rebound_host_cannot_read_any_route_without_a_token(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        service = await start_service(nursery)
        service.ctx.hub.publish("orders", {"account": "U1234567", "orderId": 1})
        url = service.url
        host = f"{ATTACKER}:{address(url)[1]}"
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            for path in [
                "/events/orders?since=0",  # the fast path
                "/events/orders?since=0&wait=1",
                "/events/marketdata?conid=265598",
                "/events/orders/history",
                "/events/orders/stream",
                "/events/_status",
                "/metrics",
                "/openapi.json",
                "/nope",
            ]:
                response = await client.get(url + path, headers={"host": host})
                assert response.status_code == 403, path
                assert response.json()["code"] == "host_not_allowed", path
                assert "U1234567" not in response.text
            health = await client.get(f"{url}/health", headers={"host": host})
            own = await client.get(f"{url}/events/orders?since=0")
    assert health.status_code == 200
    assert own.status_code == 200 and own.json()["events"][0]["payload"]["account"] == "U1234567"
    assert service.ctx.wants.wanted() == []  # the refused marketdata poll wanted nothing


async def test_cross_site_requests_from_a_browser_do_not_subscribe_conids(
    nursery: trio.Nursery,
) -> None:
    wants = Wants(10)
    with trio.fail_after(20):
        service = await start_service(nursery, wants=wants)
        async with httpx.AsyncClient(
            verify=SSL_CONTEXT, base_url=service.url, timeout=10
        ) as client:
            # <img src="http://127.0.0.1:8080/events/marketdata?conid=8314">
            img = await client.get(
                "/events/marketdata?conid=8314", headers={"sec-fetch-site": "cross-site"}
            )
            # fetch("http://127.0.0.1:8080/events/marketdata:8315") from another origin
            fetched = await client.get(
                "/events/marketdata:8315", headers={"origin": f"https://{ATTACKER}"}
            )
            stream = await client.get(
                "/events/marketdata:8316/stream", headers={"sec-fetch-site": "same-site"}
            )
            typed = await client.get(
                "/events/marketdata?conid=1", headers={"sec-fetch-site": "none"}
            )
    assert [r.status_code for r in (img, fetched, stream)] == [403, 403, 403]
    assert typed.status_code == 200
    assert wants.wanted() == [1]


async def test_allowed_hosts_are_answered_and_a_token_lifts_the_check(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        named = await start_service(nursery, allowed_hosts=("bezant.local",))
        tokened = await start_service(nursery, token="s3cret-token")
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            by_name = await client.get(
                f"{named.url}/events/orders", headers={"host": "bezant.local:8080"}
            )
            other = await client.get(f"{named.url}/events/orders", headers={"host": ATTACKER})
            with_token = await client.get(
                f"{tokened.url}/events/orders",
                headers={"host": ATTACKER, "authorization": "Bearer s3cret-token"},
            )
            without = await client.get(f"{tokened.url}/events/orders", headers={"host": ATTACKER})
    assert by_name.status_code == 200 and other.status_code == 403
    assert with_token.status_code == 200 and without.status_code == 401


async def test_no_cors_headers_and_no_preflight_answer(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        service = await start_service(nursery)
        async with httpx.AsyncClient(
            verify=SSL_CONTEXT, base_url=service.url, timeout=10
        ) as client:
            answers = [
                await client.get("/events/orders", headers={"origin": "http://localhost:3000"}),
                await client.get("/events/_status", headers={"origin": "http://localhost:3000"}),
                await client.options(
                    "/events/orders",
                    headers={
                        "origin": "http://localhost:3000",
                        "access-control-request-method": "GET",
                        "access-control-request-headers": "authorization",
                    },
                ),
            ]
    assert [a.status_code for a in answers] == [200, 200, 405]
    for answer in answers:
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


async def test_http2_authority_is_checked_like_host(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        service = await start_service(nursery)
        async with RawH2.connect(*address(service.url)) as conn:
            rebound = await conn.request("/events/orders?since=0", host=f"{ATTACKER}:8080")
            own = await conn.request("/events/orders?since=0", host="127.0.0.1:8080")
            for sid in (rebound, own):
                await conn.responses[sid].ended.wait()
    assert conn.responses[rebound].status == 403
    assert b'"host_not_allowed"' in conn.responses[rebound].body
    assert conn.responses[own].status == 200
