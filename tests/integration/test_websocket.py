"""WebSocket through the gateway: the upgrade is forwarded, then bytes are pumped both ways."""
import asyncio
import json
import os
import time

import pytest
import websockets

from conftest import COOKIE, PY, WSAPP, client_ctx


@pytest.fixture(scope="module")
def wsapp(gateway):
    a = gateway.publish([PY, WSAPP, "--unix", "{socket}"], name="wsapp")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def ws_session(gateway, wsapp):
    return gateway.login(wsapp.alias, wsapp.link)


def connect(gw, alias, cookie, path="/", **kw):
    headers = {"Origin": f"https://{gw.host(alias)}"}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return websockets.connect(
        f"wss://{gw.host(alias)}{path}", ssl=client_ctx(), host="127.0.0.1", port=gw.port,
        server_hostname=gw.sni(alias), extra_headers=headers, max_size=None,
        open_timeout=5, close_timeout=5, **kw)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_plain_request_to_ws_app(ws_session):
    r = ws_session.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r


def test_echo_text_and_binary(gateway, ws_session):
    async def go():
        async with connect(gateway, ws_session.alias, ws_session.cookie) as ws:
            await ws.send("hello, gateway")
            assert await ws.recv() == "hello, gateway"
            blob = os.urandom(70_000)
            await ws.send(blob)
            assert await ws.recv() == blob
            await ws.close()
            assert ws.close_code == 1000
    run(go())


def test_1000_messages_in_order(gateway, ws_session):
    async def go():
        async with connect(gateway, ws_session.alias, ws_session.cookie) as ws:
            for i in range(1000):
                await ws.send(f"message {i:04d}")
            got = [await ws.recv() for _ in range(1000)]
            assert got == [f"message {i:04d}" for i in range(1000)]
    run(go())


def test_1000_messages_varied_sizes_interleaved(gateway, ws_session):
    async def go():
        async with connect(gateway, ws_session.alias, ws_session.cookie) as ws:
            sent = [os.urandom((i * 7919) % 20000 + 1) for i in range(1000)]

            async def sender():
                for m in sent:
                    await ws.send(m)

            task = asyncio.create_task(sender())
            got = [await ws.recv() for _ in range(1000)]
            await task
            assert len(got) == 1000
            bad = [i for i in range(1000) if got[i] != sent[i]]
            assert not bad, f"messages out of order or damaged, first at {bad[0]}"
    run(go())


def test_large_message(gateway, ws_session):
    async def go():
        async with connect(gateway, ws_session.alias, ws_session.cookie) as ws:
            blob = os.urandom(8 << 20)
            await ws.send(blob)
            assert await ws.recv() == blob
    run(go())


def test_several_sockets_at_once(gateway, ws_session):
    async def one(i):
        async with connect(gateway, ws_session.alias, ws_session.cookie) as ws:
            for j in range(50):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    async def go():
        await asyncio.gather(*(one(i) for i in range(10)))
    run(go())


def test_upgrade_request_seen_by_app(gateway, ws_session):
    async def go2():
        headers = {"Origin": f"https://{gateway.host(ws_session.alias)}",
                   "Cookie": f"theme=dark; {COOKIE}={ws_session.cookie}"}
        async with websockets.connect(
                f"wss://{gateway.host(ws_session.alias)}/headers", ssl=client_ctx(),
                host="127.0.0.1", port=gateway.port, server_hostname=gateway.sni(ws_session.alias),
                extra_headers=headers, open_timeout=5) as ws:
            return json.loads(await ws.recv())
    hs = run(go2())
    low = {}
    for k, v in hs:
        low.setdefault(k.lower(), []).append(v)
    assert low.get("host") == [gateway.host(ws_session.alias)], hs
    assert "websocket" in ",".join(low.get("upgrade", [])).lower(), hs
    assert "upgrade" in ",".join(low.get("connection", [])).lower(), hs
    assert low.get("x-forwarded-proto") == ["https"], hs
    assert low.get("cookie") == ["theme=dark"], f"cookies the app saw: {low.get('cookie')}"
    assert not any(ws_session.cookie in v for _, v in hs), "session cookie reached the app"


def test_ws_without_cookie_refused(gateway, ws_session):
    async def go():
        async with connect(gateway, ws_session.alias, None):
            pass
    with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
        run(go(), timeout=10)
    assert e.value.status_code == 403


def test_http_still_works_after_ws(ws_session):
    r = ws_session.get("/hello")
    assert r.status == 200, r


@pytest.mark.parametrize("how", ["rm", "logout"])
def test_open_websocket_closed_when_revoked(fresh_gateway, how):
    # An open WebSocket is not re-checked per message: when its route is removed or its
    # session ends, the gateway closes it within a couple of seconds (revocation sweep).
    gw = fresh_gateway
    app = gw.publish([PY, WSAPP, "--unix", "{socket}"], name="wsrevoke")
    s = gw.login(app.alias, app.link)

    async def go():
        async with connect(gw, app.alias, s.cookie) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            if how == "rm":
                out = gw.cli("rm", app.alias)
                assert out.returncode == 0, out
            else:
                r = s.logout()
                assert r.status == 200, r
            t0 = asyncio.get_event_loop().time()
            with pytest.raises(websockets.ConnectionClosed):
                while asyncio.get_event_loop().time() - t0 < 5:
                    await ws.send("still there?")
                    await asyncio.wait_for(ws.recv(), 1)
            return asyncio.get_event_loop().time() - t0

    try:
        took = run(go())
        assert took < 4, f"the WebSocket stayed open {took:.1f} s after {how}"
    finally:
        app.stop()


def test_open_websocket_closed_when_its_session_expires(make_gateway):
    """Expiry ends a session like a logout: its WebSockets close with it (they used to echo
    on long after the session's end)."""
    gw = make_gateway({"links": {"session_ttl": "10s"}}, name="ws-expiry")
    app = gw.start_direct_app(script=WSAPP)
    gw.register(app, name="wsexpiry")
    t_login = time.monotonic()
    s = gw.login(app.alias, app.link)

    async def go():
        async with connect(gw, app.alias, s.cookie) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                while time.monotonic() - t_login < 30:
                    await ws.send("still there?")
                    assert await asyncio.wait_for(ws.recv(), 2) == "still there?"
                    await asyncio.sleep(0.5)
        return time.monotonic() - t_login

    took = run(go())
    assert 8 <= took < 14, f"the WebSocket closed {took:.1f} s after a 10 s session began"

