"""Browser authentication: one-time links, the session cookie, its scope, next=, logout."""
import json
import re
import secrets
import subprocess
import time
import urllib.parse

import pytest

from conftest import COOKIE, build_request, link_target, parse_set_cookie


@pytest.fixture(scope="module")
def app_b(gateway):
    a = gateway.publish_http(name="otherapp")
    yield a
    a.stop()


def redeem(gw, alias, link, query=""):
    target = link_target(link) + query
    with gw.connect(alias) as c:
        c.send(build_request("GET", target, gw.host(alias)))
        t0 = time.monotonic()
        r = c.read_response()
        r.elapsed = time.monotonic() - t0
        return r


def session_cookie(r):
    for v in r.header_all("Set-Cookie"):
        name, val, attrs = parse_set_cookie(v)
        if name == COOKIE:
            return val, attrs, v
    return None, None, None


def test_redeem_sets_host_cookie_and_redirects(gateway, app):
    link = gateway.new_link(app.alias)
    r = redeem(gateway, app.alias, link)
    assert r.status == 303, r
    assert r.header("Location") == "/", r.headers
    val, attrs, raw = session_cookie(r)
    assert val, f"no {COOKIE} cookie in {r.headers}"
    assert len(val) >= 22, f"session value too short to hold 128 bits: {val!r}"
    assert attrs.get("path") == "/", raw
    assert "httponly" in attrs, raw
    assert "secure" in attrs, raw
    assert attrs.get("samesite", "").lower() == "lax", raw
    assert "domain" not in attrs, f"__Host- cookie must be host-only: {raw}"
    token = link_target(link).rsplit("/", 1)[1]
    assert token not in raw, "the cookie carries the link token itself"


def test_session_reaches_app(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    r = s.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r


def test_status_page(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    r = s.get("/_jobgate/status")
    assert r.status == 200, r
    out = json.loads(r.body)
    assert out.get("alias") == app.alias and out.get("state") == "ready", out


def test_link_reuse_refused(gateway, app):
    link = gateway.new_link(app.alias)
    assert redeem(gateway, app.alias, link).status == 303
    r = redeem(gateway, app.alias, link)
    assert r.status == 403, f"a used link was accepted again: {r!r}"
    assert session_cookie(r)[0] is None, r.headers
    assert r.elapsed < 2


def test_expired_link_refused(gateway, app):
    out = gateway.cli("link", app.alias, "--ttl", "1s")
    assert out.returncode == 0, out
    m = re.search(rb"https://\S+/_jobgate/redeem/\S+", out.stdout)
    assert m, f"`jobgate link` printed no link: {out.stdout!r}"
    link = m.group(0).decode()
    time.sleep(2.2)
    r = redeem(gateway, app.alias, link)
    assert r.status == 403, f"an expired link was accepted: {r!r}"
    assert session_cookie(r)[0] is None


def test_unknown_token_refused(gateway, app):
    r = redeem(gateway, app.alias,
               f"https://{gateway.host(app.alias)}/_jobgate/redeem/{secrets.token_urlsafe(32)}")
    assert r.status == 403, r
    r = redeem(gateway, app.alias, f"https://{gateway.host(app.alias)}/_jobgate/redeem/x")
    assert r.status == 403, r


def test_link_of_other_app_refused(gateway, app, app_b):
    link_a = gateway.new_link(app.alias)
    r = redeem(gateway, app_b.alias, link_a)
    assert r.status == 403, f"app A's link opened app B: {r!r}"
    assert session_cookie(r)[0] is None


@pytest.mark.parametrize("cookie", [None, "", "garbage", secrets.token_urlsafe(32)],
                         ids=["none", "empty", "garbage", "random"])
def test_no_valid_cookie_gets_403(gateway, app, cookie):
    with gateway.connect(app.alias) as c:
        hs = [] if cookie is None else [("Cookie", f"{COOKIE}={cookie}")]
        t0 = time.monotonic()
        c.send(build_request("GET", "/hello", gateway.host(app.alias), headers=hs))
        r = c.read_response()
        assert time.monotonic() - t0 < 2
    assert r.status == 403, r
    assert "text/html" in (r.header("Content-Type") or ""), r.headers
    assert b"hello" not in r.body


def test_403_does_not_run_the_body_as_a_request(gateway, app):
    """A refused POST's body is never parsed as a next request on the same connection."""
    host = gateway.host(app.alias)
    inner = build_request("GET", "/hello", host)
    with gateway.connect(app.alias) as c:
        c.send(build_request("POST", "/echo", host, body=inner))
        r = c.read_response()
        assert r.status == 403, r
        assert c.quiet_for(1.0), f"the body was answered as a request: {bytes(c.buf[:200])!r}"


def test_expect_100_without_session_gets_403_not_100(gateway, app):
    host = gateway.host(app.alias)
    with gateway.connect(app.alias) as c:
        c.send(f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n"
               f"Expect: 100-continue\r\n\r\n".encode())
        c.settimeout(3)
        r = c.read_head()
        assert r.status == 403, f"expected an immediate 403 (no 100 Continue), got {r!r}"


def test_session_cookie_never_reaches_app(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    for cookie_line in (f"a=1; {COOKIE}={s.cookie}; b=2",
                        f"{COOKIE}={s.cookie}; a=1; b=2",
                        f"a=1; b=2; {COOKIE}={s.cookie}"):
        r = s.get("/headers", cookie=False, headers=[("Cookie", cookie_line)])
        assert r.status == 200, r
        hs = json.loads(r.body)
        cookies = [v for k, v in hs if k.lower() == "cookie"]
        assert len(cookies) == 1, hs
        pairs = [p.strip() for p in cookies[0].split(";")]
        assert pairs == ["a=1", "b=2"], f"{cookie_line!r} reached the app as {cookies[0]!r}"
        assert not any(s.cookie in v or COOKIE in v for _, v in hs), hs


def test_only_session_cookie_drops_cookie_header(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    r = s.get("/headers")
    assert r.status == 200, r
    hs = json.loads(r.body)
    assert [v for k, v in hs if k.lower() == "cookie"] == [], f"empty Cookie kept: {hs}"


def test_session_cookie_in_second_cookie_field_not_forwarded(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    r = s.get("/headers", cookie=False,
              headers=[("Cookie", "a=1"), ("Cookie", f"{COOKIE}={s.cookie}; b=2")])
    if r.status == 200:
        hs = json.loads(r.body)
        assert not any(s.cookie in v for _, v in hs), f"session value reached the app: {hs}"
    else:
        assert r.status in (400, 403), r


def test_session_of_app_a_refused_on_app_b(gateway, app, app_b):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    with gateway.connect(app_b.alias) as c:
        c.send(build_request("GET", "/hello", gateway.host(app_b.alias), cookie=s.cookie))
        r = c.read_response()
    assert r.status == 403, f"app A's session opened app B: {r!r}"


NEXT_OK = [("/some/path", "/some/path"), ("%2Fsome%2Fpath", "/some/path")]
NEXT_BAD = ["//evil.com", "%2F%2Fevil.com", "https://evil.com", "https%3A%2F%2Fevil.com",
            "%2F%5Cevil", "%2F%5C%2Fevil.com", "%5C%5Cevil.com", "http%3A%2F%2Fevil.com",
            "javascript%3Aalert(1)", "%2F%09%2Fevil.com", "%2F%0D%0AX-Injected%3A%201",
            "%2F%0AX-Injected%3A%201", "%2F%00evil", ""]


@pytest.mark.parametrize("raw,expect", NEXT_OK, ids=["plain", "encoded"])
def test_next_same_host_path(gateway, app, raw, expect):
    r = redeem(gateway, app.alias, gateway.new_link(app.alias), f"?next={raw}")
    assert r.status == 303, r
    assert r.header("Location") == expect, r.headers
    assert session_cookie(r)[0]


def test_next_path_with_query(gateway, app):
    nxt = urllib.parse.quote("/notebooks/x.ipynb?kernel=1", safe="")
    r = redeem(gateway, app.alias, gateway.new_link(app.alias), f"?next={nxt}")
    assert r.status == 303, r
    loc = r.header("Location")
    assert loc.startswith("/notebooks/") and not loc.startswith("//"), r.headers
    assert "kernel=1" in loc, r.headers


@pytest.mark.parametrize("raw", NEXT_BAD)
def test_next_offsite_refused(gateway, app, raw):
    r = redeem(gateway, app.alias, gateway.new_link(app.alias), f"?next={raw}")
    assert r.status == 303, r
    assert r.header("Location") == "/", f"next={raw} redirected to {r.header('Location')!r}"
    assert r.header("X-Injected") is None, f"header injected through next=: {r.headers}"
    assert session_cookie(r)[0], "the link itself was good; the cookie should still be set"


def test_logout_ends_session(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    assert s.get("/hello").status == 200
    # A GET (an <img> on another app's page, a prefetch) only shows the button.
    r = s.get("/_jobgate/logout")
    assert r.status == 200 and b'method="post"' in r.body, r
    assert session_cookie(r)[0] is None, f"a GET logged out: {r.headers}"
    assert s.get("/hello").status == 200
    assert s.request("PUT", "/_jobgate/logout", body=b"").status == 405
    # A POST from another app's page (same-site) or another site is refused.
    for hdr in (("Sec-Fetch-Site", "same-site"), ("Sec-Fetch-Site", "cross-site"),
                ("Origin", f"https://other.{gateway.domain}:{gateway.port}"), ("Origin", "null")):
        r = s.logout(headers=[hdr])
        assert r.status == 403, (hdr, r)
        assert s.get("/hello").status == 200, f"{hdr} logged out"
    r = s.logout(headers=[("Sec-Fetch-Site", "same-origin"),
                          ("Origin", f"https://{s.host}")])
    assert r.status == 200, r
    val, attrs, raw = session_cookie(r)
    assert val is not None, f"logout did not clear the cookie: {r.headers}"
    assert attrs.get("max-age") == "0", raw
    assert attrs.get("path") == "/" and "secure" in attrs, raw
    r = s.get("/hello")
    assert r.status == 403, f"session still valid after logout: {r!r}"


def test_logout_of_one_session_keeps_others(gateway, app):
    s1 = gateway.login(app.alias, gateway.new_link(app.alias))
    s2 = gateway.login(app.alias, gateway.new_link(app.alias))
    assert s1.cookie != s2.cookie
    assert s1.logout().status == 200
    assert s1.get("/hello").status == 403
    assert s2.get("/hello").status == 200


def test_reserved_paths_not_proxied(gateway, app):
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    r = s.get("/_jobgate/no-such-thing")
    assert r.status == 404, r
    assert r.body != b"no such test endpoint\n", "a /_jobgate/ path reached the app"


def test_curl_follows_link_with_cookie_jar(gateway, app, tmp_path):
    jar = tmp_path / "jar.txt"
    host = f"{app.alias}.localhost"
    out = subprocess.run(
        ["curl", "-ksSL", "--max-time", "10", "--resolve", f"{host}:{gateway.port}:127.0.0.1",
         "-c", str(jar), "-b", str(jar), "-w", "\n%{http_code}", gateway.new_link(app.alias)],
        capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"index\n\n200", out.stdout
    assert COOKIE in jar.read_text()


def test_absolute_form_target_cannot_switch_app(gateway, app, app_b):
    """Routing and authentication follow one authority: a request with Host and cookie of
    app A but an absolute-form target naming app B never reaches app B."""
    s = gateway.login(app.alias, gateway.new_link(app.alias))
    a_listen = s.get("/env").json()["listen"]
    sb = gateway.login(app_b.alias, gateway.new_link(app_b.alias))
    b_listen = sb.get("/env").json()["listen"]
    assert a_listen != b_listen
    with s.conn() as c:
        c.send(build_request("GET", f"https://{gateway.host(app_b.alias)}/env", s.host,
                             cookie=s.cookie))
        r = c.read_response()
    if r.status == 200:
        assert json.loads(r.body)["listen"] == a_listen, "absolute-form target reached app B"
    else:
        assert r.status in (400, 403, 421), r


def test_secrets_never_logged(make_gateway):
    """I4: link tokens and session values do not appear in the log, even with -v."""
    gw = make_gateway(verbose=True)
    a = gw.start_direct_app()
    gw.register(a)
    token = link_target(a.link).rsplit("/", 1)[1]
    s = gw.login(a.alias, a.link)
    assert s.get("/hello").status == 200
    link2 = gw.new_link(a.alias)
    token2 = link_target(link2).rsplit("/", 1)[1]
    redeem(gw, a.alias, link2)          # a good redeem
    redeem(gw, a.alias, link2)          # a reused token
    s.logout()
    s.get("/hello")                     # a stale session
    time.sleep(0.3)
    log = gw.log_path.read_text(errors="replace")
    for secret in (token, token2, s.cookie):
        assert secret not in log, f"a secret appears in the gateway log: ...{secret[:6]}..."
    # stored only as hashes: no file of the state directory holds them in clear
    link3 = gw.new_link(a.alias)
    token3 = link_target(link3).rsplit("/", 1)[1]
    s3 = gw.login(a.alias, gw.new_link(a.alias))
    time.sleep(0.3)
    for f in gw.state_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in (token3, s3.cookie):
                assert secret.encode() not in data, f"a secret is stored in clear in {f}"
