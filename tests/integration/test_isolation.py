"""Cross-app isolation in the browser (issue 13, docs/security.md): every app lives under the
gateway's domain, so a page of one app is "same-site" to all the others. An app's cookies are
host-only, a state-changing request from another app's page (or another site) is refused, and
logout is a POST with the same check. The last test proves it in Chromium."""
import os
import time
import urllib.parse

import pytest

from browser import BROWSER_DIR, browser_missing, run_browser_script
from conftest import APPS, PY, mkdtemp, parse_set_cookie, spawn, wait_for

DOMAIN = "apps.test"


@pytest.fixture(scope="module")
def igw(binaries):
    from conftest import _finish, _gateway
    gw = _gateway({"gateway": {"domain": DOMAIN}}, name="isolation")
    yield gw
    _finish(gw)


@pytest.fixture(scope="module")
def victim(igw):
    a = igw.start_direct_app()
    igw.register(a, name="victim")
    a.session = igw.login(a.alias, a.link)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def evil(igw):
    """A hostile app: its responses plant a cookie for the whole domain; its page attacks."""
    d = mkdtemp("jga-evil-")
    sock = str(d / "app.sock")
    p = spawn([PY, str(APPS / "evilapp.py"), sock, DOMAIN])
    wait_for(lambda: os.path.exists(sock), 10, what="the evil app's socket")
    ans = igw.control({"op": "register", "name": "evil", "socket": sock, "pid": p.pid})
    assert ans["ok"], ans
    yield ans
    p.kill()
    p.wait()


def other_origin(gw):
    return f"https://other.{gw.domain}:{gw.port}"


@pytest.mark.parametrize("hdrs", [
    [("Sec-Fetch-Site", "same-site")],
    [("Sec-Fetch-Site", "cross-site")],
    [("Origin", "https://other.apps.test:443")],
    [("Origin", "null")],
    [("Sec-Fetch-Site", "same-origin"), ("Origin", "https://evil.example")],
])
def test_state_changing_request_from_another_page_is_refused(igw, victim, hdrs):
    r = victim.session.request("POST", "/echo", headers=hdrs, body=b"attack")
    assert r.status == 403, (hdrs, r)
    assert b"another app or site" in r.body and b"--cross-site" in r.body, r.body
    # An upgrade (a WebSocket) is state-changing too.
    r = victim.session.request("GET", "/ws", headers=[*hdrs, ("Connection", "Upgrade"),
                                                      ("Upgrade", "websocket")])
    assert r.status == 403, (hdrs, r)


def test_own_pages_and_safe_requests_pass(igw, victim):
    s = victim.session
    own = [("Sec-Fetch-Site", "same-origin"), ("Origin", f"https://{s.host}")]
    assert s.request("POST", "/echo", headers=own, body=b"x").status == 200
    assert s.request("POST", "/echo", body=b"x").status == 200  # no browser fields: curl
    assert s.request("POST", "/echo", headers=[("Sec-Fetch-Site", "none")], body=b"x").status == 200
    # A link from anywhere still opens the app: GET is not refused.
    for site in ("same-site", "cross-site"):
        assert s.get("/hello", headers=[("Sec-Fetch-Site", site)]).status == 200


def test_an_app_can_choose_to_take_cross_site_requests(igw):
    a = igw.start_direct_app()
    try:
        igw.register(a, name="open", cross_site=True)
        s = igw.login(a.alias, a.link)
        r = s.request("POST", "/echo", headers=[("Sec-Fetch-Site", "cross-site"),
                                                ("Origin", other_origin(igw))], body=b"ok")
        assert r.status == 200 and r.body == b"ok", r
        assert [x for x in igw.ls_json() if x["alias"] == a.alias][0].get("cross_site") is True
        ans = igw.control({"op": "register", "name": "bad", "socket": a.sock,
                           "cross_site": "yes"})
        assert ans["ok"] is False and "cross_site" in ans["error"], ans
    finally:
        a.stop()


def test_app_cookies_are_host_only(igw, evil):
    s = igw.login(evil["alias"], evil["link"])
    r = s.get("/")
    cookies = [parse_set_cookie(v) for v in r.header_all("Set-Cookie")]
    planted = [c for c in cookies if c[0] == "planted"]
    assert planted, r.headers
    name, val, attrs = planted[0]
    assert "domain" not in attrs, f"the app's Domain attribute reached the browser: {attrs}"
    assert attrs.get("path") == "/" and "secure" in attrs, attrs


def test_chromium_page_of_one_app_cannot_act_in_another(igw, evil):
    """The whole story in Chromium: Bob's app's page (evil) attacks Alice's app (victim) with
    a fetch and a form POST, an <img> on her logout and a WebSocket, and plants a cookie for
    the whole domain. Alice's app sees none of it, her session lives on, and the cookie
    stays on Bob's host."""
    why = browser_missing()
    if why:
        pytest.skip(why)
    victim = igw.start_direct_app()  # its own: every access line of its alias is this test's
    igw.register(victim, name="victim2")
    victim_link = victim.link
    vorigin = f"https://{victim.alias}.{DOMAIN}:{igw.port}"
    evil_link = igw.new_link(evil["alias"]) + "?next=" + urllib.parse.quote(
        "/?victim=" + vorigin, safe="")
    run = run_browser_script(BROWSER_DIR / "siblings.mjs",
                             ["--victim", victim_link, "--attacker", evil_link,
                              "--resolve", f"MAP *.{DOMAIN} 127.0.0.1"], timeout=90)
    assert run.ok, run.describe()
    res = run.result
    print("browser:", res)
    assert res["attacks"]["fetch"] == "sent" and res["attacks"]["form"] == "sent", res
    assert res["attacks"]["ws"] != "open", res
    assert res["victim_status"] == 200, f"the victim's session did not survive: {res}"
    assert "planted" not in res["victim_cookies"], res
    assert "planted" in res["attacker_cookies"], f"the app's own cookie was lost: {res}"
    # What reached the victim's alias: every attack refused at the gateway.
    time.sleep(1.2)
    log = igw.log_path.read_text(errors="replace")
    lines = [ln for ln in log.splitlines() if f"alias={victim.alias} " in ln]
    # Refused at the gateway although the browser sent the victim's cookie (same-site): the
    # session was admitted (its uid is logged), the request went no further.
    posts = [ln for ln in lines if '"POST /echo"' in ln]
    assert len(posts) >= 2 and all(" 403 " in ln and "uid=-1" not in ln for ln in posts), posts
    ws = [ln for ln in lines if '"GET /ws"' in ln]
    assert ws and all(" 403 " in ln and "uid=-1" not in ln for ln in ws), ws
