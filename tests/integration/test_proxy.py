"""HTTP/1.1 proxying through the gateway: keep-alive (a POST never sent to the app twice),
framing, hop-by-hop fields, forwarding."""
import hashlib
import json
import os
import time

import pytest

from conftest import BLOCK, COOKIE, build_request, mkdtemp, script_app


def pattern(n, offset=0):
    reps = (n + offset) // len(BLOCK) + 1
    return (BLOCK * reps)[offset: offset + n]


def app_headers(resp):
    assert resp.status == 200, resp
    return [(k, v) for k, v in json.loads(resp.body)]


def names(hs):
    return [k.lower() for k, _ in hs]


def values(hs, name):
    return [v for k, v in hs if k.lower() == name.lower()]


# --------------------------------------------------------------------------- basics


def test_get_hello(client):
    r = client.get("/hello")
    assert r.status == 200, r
    assert r.body == b"hello\n"
    assert r.version == "HTTP/1.1"


def test_get_keepalive_many_requests_one_connection(client):
    with client.conn() as c:
        for i in range(25):
            r = client.get(f"/hello?i={i}", conn=c)
            assert r.status == 200, f"request {i}: {r!r}"
            assert r.body == b"hello\n"
            assert "close" not in (r.header("Connection") or "").lower(), \
                f"gateway asked to close after request {i}"
        assert not c.eof


def test_post_then_get_keepalive(client):
    body = os.urandom(100_000)
    with client.conn() as c:
        for i in range(5):
            r = client.request("POST", "/echo", body=body, conn=c)
            assert r.status == 200, r
            assert r.body == body, f"echo {i} differs (len {len(r.body)})"
            assert r.header("Content-Length") == str(len(body))
            r = client.get("/hello", conn=c)
            assert r.status == 200 and r.body == b"hello\n", r


def test_pipelined_requests_answered_in_order(client):
    with client.conn() as c:
        reqs = b"".join(build_request("GET", f"/headers?n={i}", client.host, cookie=client.cookie)
                        for i in range(3))
        reqs += build_request("GET", "/hello", client.host, cookie=client.cookie)
        c.send(reqs)
        for i in range(3):
            r = c.read_response()
            assert r.status == 200, r
            assert r.header("X-Request-Target") == f"/headers?n={i}", \
                f"pipelined response {i} out of order: {r!r}"
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello\n", r


def test_pipelined_100_requests_in_one_write(client):
    with client.conn() as c:
        c.send(b"".join(build_request("GET", f"/headers?n={i}", client.host, cookie=client.cookie)
                        for i in range(100)))
        for i in range(100):
            r = c.read_response()
            assert r.status == 200 and r.header("X-Request-Target") == f"/headers?n={i}", \
                f"pipelined response {i}: {r!r}"


def test_pipelined_post_bodies(client):
    bodies = [os.urandom(1000 * (i + 1)) for i in range(5)]
    with client.conn() as c:
        c.send(b"".join(build_request("POST", "/echo", client.host, body=b, cookie=client.cookie,
                                      chunked=(i % 2 == 1), chunk_size=333)
                        for i, b in enumerate(bodies)))
        for i, b in enumerate(bodies):
            r = c.read_response()
            assert r.status == 200 and r.body == b, f"pipelined POST {i}: {r!r}"


def test_request_target_forwarded_verbatim(client):
    target = "/headers?a=1&b=%2F%20x&c=%E2%9C%93&a=2"
    r = client.get(target)
    assert r.status == 200, r
    assert r.header("X-Request-Target") == target
    assert r.header("X-Request-Method") == "GET"
    assert r.header("X-Request-Version") == "HTTP/1.1"


def test_http10_request_answered_and_closed(client):
    with client.conn() as c:
        c.send(build_request("GET", "/hello", client.host, cookie=client.cookie,
                             version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200, r
        assert r.body == b"hello\n"
        c.expect_close(3)


def test_large_but_allowed_header(client):
    big = "x" * 16000
    r = client.get("/headers", headers=[("X-Big", big)])
    hs = app_headers(r)
    assert values(hs, "X-Big") == [big]


def test_header_order_and_duplicates_preserved(client):
    sent = [("X-A", "1"), ("X-Dup", "first"), ("X-B", "2"), ("X-Dup", "second"),
            ("Accept", "text/html"), ("Accept", "application/json")]
    hs = app_headers(client.get("/headers", headers=sent))
    got = [(k.lower(), v) for k, v in hs if k.lower() in ("x-a", "x-b", "x-dup", "accept")]
    assert got == [(k.lower(), v) for k, v in sent]


def test_app_status_and_body_relayed(client):
    r = client.get("/status/418")
    assert r.status == 418, r
    assert r.body == b"status 418\n"
    r = client.get("/no-such-endpoint")
    assert r.status == 404 and r.body == b"no such test endpoint\n", r


# --------------------------------------------------------------------------- chunked


def test_chunked_request_reaches_app_chunked(client):
    body = pattern(300_000)
    r = client.request("POST", "/sink", body=body, chunked=True)
    assert r.status == 200, r
    out = r.json()
    assert out["framing"] == "chunked", f"app saw framing {out}"
    assert out["content_length"] is None
    assert out["bytes"] == len(body)
    assert out["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_with_extensions_and_trailer(client):
    host = client.host
    raw = (f"POST /sink HTTP/1.1\r\nHost: {host}\r\nCookie: {COOKIE}={client.cookie}\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n"
           f"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n").encode()
    with client.conn() as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == 200, r
        out = r.json()
        assert out["bytes"] == 11
        assert out["sha256"] == hashlib.sha256(b"hello world").hexdigest()
        # and the connection is still in sync
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_chunked_response_reaches_client_chunked(client):
    n = 1_000_000
    with client.conn() as c:
        c.send(build_request("GET", f"/bytes?n={n}&chunked=1", client.host, cookie=client.cookie))
        r = c.read_response()
        assert r.status == 200, r
        assert "chunked" in (r.header("Transfer-Encoding") or "").lower(), r.headers
        assert r.header("Content-Length") is None
        assert r.chunked and r.chunk_sizes[-1] == 0
        assert r.body == pattern(n)
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_chunked_echo_roundtrip(client):
    body = os.urandom(200_000)
    with client.conn() as c:
        c.send(build_request("POST", "/echo", client.host, body=body, chunked=True,
                             cookie=client.cookie, chunk_size=7000))
        r = c.read_response()
        assert r.status == 200, r
        assert r.chunked, f"chunked echo answered without chunked framing: {r.headers}"
        assert r.body == body
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_empty_chunked_body(client):
    r = client.request("POST", "/sink", body=b"", chunked=True)
    assert r.status == 200, r
    assert r.json()["bytes"] == 0


def test_content_length_download(client):
    n = 3_000_000
    r = client.get(f"/bytes?n={n}")
    assert r.status == 200, r
    assert r.header("Content-Length") == str(n)
    assert r.body == pattern(n)


def test_close_delimited_response_relayed(client):
    """An app that ends its body by closing: the client still gets all of it, well framed."""
    n = 300_000
    with client.conn() as c:
        c.send(build_request("GET", f"/eofbody?n={n}", client.host, cookie=client.cookie))
        r = c.read_response()
        assert r.status == 200, r
        assert r.body == pattern(n), f"got {len(r.body)} of {n} bytes"
        framed = r.chunked or r.header("Content-Length") is not None
        if framed:
            assert client.get("/hello", conn=c).body == b"hello\n"
        else:
            assert c.eof, "close-delimited body but the connection stayed open"


def test_chunked_response_with_trailer(client):
    with client.conn() as c:
        r = client.get("/trailers", conn=c)
        assert r.status == 200, r
        assert r.body == b"hello trailers\n"
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_early_hints_then_final(client):
    with client.conn() as c:
        r = client.get("/early", conn=c)
        assert r.status == 200, r
        assert r.body == b"after hints\n"
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_large_response_head_relayed(client):
    r = client.get("/bighead?n=16000")
    assert r.status == 200, r
    assert r.header("X-Big") == "h" * 16000
    assert r.body == b"big head\n"


def test_connection_close_honoured(client):
    with client.conn() as c:
        c.send(build_request("GET", "/hello", client.host, cookie=client.cookie,
                             headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello\n", r
        c.expect_close(3)


CLOSER = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n"
          "while True:\n"
          "    c,_=s.accept()\n"
          "    d=c.recv(65536)\n"
          "    open(sys.argv[2],'ab').write(d.split(b'\\r\\n')[0]+b'\\n')\n"
          "    if b' /first ' in d:\n"
          "        c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
          "        d=c.recv(65536)\n"
          "        open(sys.argv[2],'ab').write(d.split(b'\\r\\n')[0]+b'\\n')\n"
          "    c.close()\n")


def test_post_on_a_closed_kept_connection_is_not_resent(fresh_gateway):
    # The app answers /first, then closes the kept connection as the next request arrives.
    # A POST may have acted already: the browser gets 502 and the app sees it once.
    gw = fresh_gateway
    d = mkdtemp("jgc-")
    os.chmod(d, 0o700)
    sock, log = d / "app.sock", d / "seen"
    with script_app(CLOSER, sock, log):
        ans = gw.control({"op": "register", "name": "closer", "socket": str(sock)})
        s = gw.login(ans["alias"], ans["link"])
        c = s.conn()
        c.send(build_request("GET", "/first", s.host, cookie=s.cookie))
        assert c.read_response().status == 200
        c.send(build_request("POST", "/pay", s.host, headers=[("Content-Length", "0")],
                             cookie=s.cookie))
        r = c.read_response("POST")
        assert r.status == 502, r
        time.sleep(0.3)
        seen = log.read_bytes().splitlines()
        assert seen.count(b"POST /pay HTTP/1.1") == 1, seen
        c.close()


# --------------------------------------------------------------------------- Expect: 100-continue


def test_expect_100_continue(client):
    body = os.urandom(50_000)
    head = (f"POST /echo HTTP/1.1\r\nHost: {client.host}\r\nCookie: {COOKIE}={client.cookie}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with client.conn() as c:
        c.send(head)
        c.settimeout(5)
        t0 = time.monotonic()
        r = c.read_head()
        assert r.status == 100, f"expected 100 Continue before sending the body, got {r!r}"
        assert time.monotonic() - t0 < 3
        c.send(body)
        r = c.read_response()
        assert r.status == 200, r
        assert r.interim == [], f"more than one 100 Continue: {r.interim}"
        assert r.body == body
        assert client.get("/hello", conn=c).body == b"hello\n"


def test_expect_forwarded_to_app(client):
    """The app itself sees the Expect field (the gateway relays the app's 100, not its own)."""
    head = (f"POST /headers HTTP/1.1\r\nHost: {client.host}\r\nCookie: {COOKIE}={client.cookie}\r\n"
            f"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n").encode()
    with client.conn() as c:
        c.send(head)
        c.settimeout(5)
        r = c.read_head()
        assert r.status == 100, r
        c.send(b"hello")
        r = c.read_response()
        hs = app_headers(r)
        assert values(hs, "Expect") == ["100-continue"], hs
        assert values(hs, "Content-Length") == ["5"], hs


def test_expect_100_continue_chunked(client):
    head = (f"POST /sink HTTP/1.1\r\nHost: {client.host}\r\nCookie: {COOKIE}={client.cookie}\r\n"
            f"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").encode()
    with client.conn() as c:
        c.send(head)
        c.settimeout(5)
        r = c.read_head()
        assert r.status == 100, r
        c.send(b"3\r\nabc\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["bytes"] == 3


# --------------------------------------------------------------------------- bodiless responses


def test_head_response_has_no_body(client):
    with client.conn() as c:
        c.send(build_request("HEAD", "/bytes?n=5000", client.host, cookie=client.cookie))
        r = c.read_response("HEAD")
        assert r.status == 200, r
        assert r.header("Content-Length") == "5000"
        # anything the gateway sent after the head would show up as garbage here
        assert c.quiet_for(0.5), f"bytes after a HEAD response: {bytes(c.buf[:100])!r}"
        r = client.get("/hello", conn=c)
        assert r.status == 200 and r.body == b"hello\n", r


def test_head_then_get_chunked(client):
    with client.conn() as c:
        c.send(build_request("HEAD", "/bytes?n=100&chunked=1", client.host, cookie=client.cookie))
        r = c.read_response("HEAD")
        assert r.status == 200, r
        assert c.quiet_for(0.5), f"bytes after a HEAD response: {bytes(c.buf[:100])!r}"
        r = client.get("/bytes?n=100&chunked=1", conn=c)
        assert r.body == pattern(100)


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_status_framing(client, code):
    with client.conn() as c:
        t0 = time.monotonic()
        r = client.get(f"/status/{code}", conn=c)
        assert r.status == code, r
        assert time.monotonic() - t0 < 3, "the gateway waited for a body that cannot come"
        assert c.quiet_for(0.5), f"bytes after a {code}: {bytes(c.buf[:100])!r}"
        r = client.get("/hello", conn=c)
        assert r.status == 200 and r.body == b"hello\n", r


def test_304_keeps_its_headers(client):
    r = client.get("/status/304", headers=[("If-None-Match", '"v1"')])
    assert r.status == 304, r
    assert r.header("ETag") == '"v1"'


# --------------------------------------------------------------------------- fields


HOP_BY_HOP = [
    ("Connection", "keep-alive, X-Custom-Hop"),
    ("X-Custom-Hop", "hop-value"),
    ("Keep-Alive", "timeout=5, max=1000"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-Some-Trailer"),
    ("Upgrade", "foo/1"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
]


@pytest.mark.parametrize("field", HOP_BY_HOP, ids=[f[0] for f in HOP_BY_HOP])
def test_hop_by_hop_request_field_removed(client, field):
    sent = [field, ("X-End-To-End", "kept")]
    if field[0] == "X-Custom-Hop":
        sent.insert(0, ("Connection", "X-Custom-Hop"))
    hs = app_headers(client.get("/headers", headers=sent))
    assert field[0].lower() not in names(hs), f"{field[0]} reached the app: {hs}"
    assert values(hs, "X-End-To-End") == ["kept"]


def test_hop_by_hop_all_at_once(client):
    hs = app_headers(client.get("/headers", headers=HOP_BY_HOP + [("X-End-To-End", "kept")]))
    leaked = [k for k, _ in HOP_BY_HOP if k.lower() in names(hs)]
    assert not leaked, f"hop-by-hop fields reached the app: {leaked} in {hs}"
    assert values(hs, "X-End-To-End") == ["kept"]
    for k, v in hs:
        assert "hop-value" not in v and "dXNlcjpwYXNz" not in v, (k, v)


def test_hop_by_hop_response_fields_removed(client):
    r = client.get("/hop")
    assert r.status == 200, r
    assert r.body == b"hop\n"
    assert r.header("X-App-End") == "end-to-end"
    assert r.header("X-App-Hop") is None, f"field named in the app's Connection leaked: {r.headers}"
    assert r.header("Proxy-Connection") is None, r.headers
    assert "timeout=99" not in (r.header("Keep-Alive") or ""), r.headers
    assert "x-app-hop" not in (r.header("Connection") or "").lower(), r.headers


def test_x_forwarded_set_and_incoming_dropped(client):
    sent = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Port", "6666"),
            ("X-Forwarded-Prefix", "/evil")]
    hs = app_headers(client.get("/headers", headers=sent))
    assert values(hs, "X-Forwarded-For") == ["127.0.0.1"], hs
    assert values(hs, "X-Forwarded-Proto") == ["https"], hs
    assert values(hs, "X-Forwarded-Host") == [client.host], hs
    for k, v in hs:
        for bad in ("6.6.6.6", "evil.example", "gopher", "6666", "/evil"):
            assert bad not in v, f"incoming X-Forwarded-* value leaked: {k}: {v}"


def test_host_forwarded_unchanged(client):
    hs = app_headers(client.get("/headers"))
    assert values(hs, "Host") == [client.host], hs


def test_other_request_fields_pass(client):
    sent = [("Authorization", "Bearer app-token"), ("Origin", f"https://{client.host}"),
            ("User-Agent", "jobgate-tests/1"), ("X-Tab", "a\tb")]
    hs = app_headers(client.get("/headers", headers=sent))
    for k, v in sent:
        assert values(hs, k) == [v], (k, hs)


def test_curl_get(gateway, client, tmp_path):
    import subprocess
    out = subprocess.run(
        ["curl", "-ksS", "--max-time", "10", "--resolve",
         f"{client.alias}.localhost:{gateway.port}:127.0.0.1",
         "-b", f"{COOKIE}={client.cookie}", "-w", "\n%{http_code} %{http_version}",
         f"https://{client.alias}.localhost:{gateway.port}/hello"],
        capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello\n\n200 1.1", out.stdout


def test_curl_chunked_upload(gateway, client, tmp_path):
    import subprocess
    data = os.urandom(500_000)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    out = subprocess.run(
        ["curl", "-ksS", "--max-time", "10", "--resolve",
         f"{client.alias}.localhost:{gateway.port}:127.0.0.1",
         "-b", f"{COOKIE}={client.cookie}", "-H", "Transfer-Encoding: chunked",
         "--data-binary", f"@{f}", f"https://{client.alias}.localhost:{gateway.port}/sink"],
        capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["framing"] == "chunked"
    assert res["bytes"] == len(data)
    assert res["sha256"] == hashlib.sha256(data).hexdigest()


def test_many_concurrent_clients(client):
    import threading
    errors = []

    def worker(i):
        try:
            with client.conn() as c:
                for j in range(5):
                    r = client.get(f"/headers?c={i}&r={j}", conn=c)
                    assert r.status == 200, r
                    assert r.header("X-Request-Target") == f"/headers?c={i}&r={j}"
        except Exception as e:  # noqa: BLE001
            errors.append(f"client {i}: {e!r}")

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors[:5]
    assert time.monotonic() - t0 < 20


def test_client_aborts_mid_upload_and_mid_download(gateway, client):
    """Clients that vanish half way do not hurt the gateway or the next clients."""
    for _ in range(5):
        c = client.conn()
        c.send(build_request("POST", "/sink", client.host, cookie=client.cookie,
                             headers=[("Content-Length", str(10 << 20))]))
        c.send(os.urandom(100_000))
        c.sock.close()
        c = client.conn()
        c.send(build_request("GET", f"/bytes?n={100 << 20}", client.host, cookie=client.cookie))
        c.read_head()
        c.sock.close()
    time.sleep(0.5)
    gateway.assert_alive()
    r = client.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r


def test_absolute_form_target_accepted(client):
    # RFC 9112 3.2.2: a server MUST accept absolute-form; the authority replaces Host, and the
    # app gets origin-form with that Host.
    with client.conn() as c:
        c.send(build_request("GET", f"https://{client.host}/headers?abs=1", "ignored.example",
                             cookie=client.cookie))
        r = c.read_response()
    assert r.status == 200, r
    assert r.header("X-Request-Target") == "/headers?abs=1"
    hosts = [v for k, v in json.loads(r.body) if k.lower() == "host"]
    assert hosts == [client.host], hosts


@pytest.mark.parametrize("chunked", [False, True])
def test_keepalive_after_a_response_that_filled_the_browsers_buffer(client, chunked):
    """A slow reader: the app has written the whole answer long before the browser takes its
    tail, so the gateway's last read from the app fills the browser's buffer and pauses that
    backend connection at the very moment the answer ends. The next request on the same
    connection reuses the backend and must find it reading again (it timed out before)."""
    n = 4 << 20
    q = f"/bytes?n={n}" + ("&chunked=1" if chunked else "")
    with client.conn(timeout=20) as c:
        c.send(build_request("GET", q, client.host, cookie=client.cookie))
        r = c.read_head()
        assert r.status == 200, r
        got = 0
        for d in c.iter_body(r):
            got += len(d)
            time.sleep(0.002)  # slower than the app: its tail waits in the socket buffers
        assert got == n
        assert client.get("/hello", conn=c).body == b"hello\n"
