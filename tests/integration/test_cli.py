"""The `jobgate` CLI: run (text and --json), substitution, exit status, signals, ls/link/rm."""
import json
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from conftest import HTTPAPP, JOBGATE, PY, Gateway, free_port, tail, wait_for

LINK_RE = r"https://([a-z0-9-]+)\.localhost:{port}/_jobgate/redeem/([A-Za-z0-9_-]{{43}})"


def listed(gw, alias):
    return [r for r in gw.ls_json() if r.get("alias") == alias]


def ls_table(gw):
    """`jobgate ls` (text): asserts exit status 0 and the header, returns the rows as
    {column: cell} (cells are separated by two or more spaces)."""
    out = gw.cli("ls")
    assert out.returncode == 0, out
    lines = out.stdout.decode().splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    assert head == ["ALIAS", "NAME", "JOB", "BACKEND", "REACH", "SEEN", "AGE", "URL"], lines
    return [dict(zip(head, re.split(r"\s{2,}", ln.strip()))) for ln in lines[1:]]


def env_of(session):
    r = session.get("/env")
    assert r.status == 200, r
    return r.json()


# --------------------------------------------------------------------------- run


def test_run_prints_url_and_link(gateway):
    app = gateway.publish([PY, HTTPAPP, "--unix", "{socket}"], json_mode=False, wait=False)
    try:
        want = re.compile(LINK_RE.format(port=gateway.port))
        seen = []
        deadline = time.monotonic() + 20
        m = None
        while time.monotonic() < deadline and not m:
            line = app.next_line(0.5)
            if line is None:
                break
            if line:
                seen.append(line)
                m = want.search(line)
        assert m, f"no link printed within 20 s; stdout: {seen}; stderr: {tail(app.log_path)}"
        alias = m.group(1)
        url = f"https://{alias}.localhost:{gateway.port}/"
        # the app's URL itself (not only as the prefix of the link)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(
                re.search(re.escape(url) + r"(?!_jobgate)", ln) for ln in seen):
            line = app.next_line(0.2)
            if line:
                seen.append(line)
        assert any(re.search(re.escape(url) + r"(?!_jobgate)", ln) for ln in seen), \
            f"the app URL {url} is not printed: {seen}"
        s = gateway.login(alias, m.group(0))
        assert s.get("/hello").status == 200
    finally:
        app.stop()


def test_run_json_events(gateway):
    app = gateway.publish_http()
    try:
        for ln in app.lines:
            ev = json.loads(ln)  # every stdout line is one JSON object
            assert isinstance(ev, dict) and isinstance(ev.get("event"), str), ln
        ev = app.ready
        alias = ev["alias"]
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", alias), alias
        assert ev["url"] == f"https://{alias}.localhost:{gateway.port}/", ev
        assert re.fullmatch(LINK_RE.format(port=gateway.port), ev["link"]), ev
        assert ev["link"].startswith(ev["url"] + "_jobgate/redeem/"), ev
        now = time.time()
        assert isinstance(ev["expires"], int) and now < ev["expires"] <= now + 7 * 86400 + 60, ev
        s = gateway.login(alias, ev["link"])
        assert s.get("/hello").status == 200
    finally:
        app.stop()


def test_run_socket_substitution_and_env(gateway):
    app = gateway.publish_http()
    try:
        s = gateway.login(app.alias, app.link)
        info = env_of(s)
        i = info["argv"].index("--unix")
        path = info["argv"][i + 1]
        assert "{socket}" not in path and os.path.isabs(path), info
        assert info["env"].get("JOBGATE_SOCKET") == path, info
        st = os.stat(os.path.dirname(path))
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0, \
            f"socket directory {os.path.dirname(path)} is not private: {oct(st.st_mode)}"
        routes = listed(gateway, app.alias)
        assert routes, "route not listed"
        if "backend" in routes[0]:
            assert routes[0]["backend"] == "unix:" + path, routes[0]
    finally:
        app.stop()


def test_run_env_only(gateway):
    """An app that reads JOBGATE_SOCKET instead of taking {socket} on its command line."""
    app = gateway.publish([PY, HTTPAPP, "--env"], name="envapp")
    try:
        s = gateway.login(app.alias, app.link)
        info = env_of(s)
        assert info["listen"] == "unix:" + info["env"]["JOBGATE_SOCKET"], info
    finally:
        app.stop()


def test_run_tcp_port_substitution_and_env(gateway):
    app = gateway.publish([PY, HTTPAPP, "--port", "{port}"], tcp=True, name="tcpapp")
    try:
        s = gateway.login(app.alias, app.link)
        info = env_of(s)
        i = info["argv"].index("--port")
        port = info["argv"][i + 1]
        assert port.isdigit() and 0 < int(port) < 65536, info
        assert info["env"].get("JOBGATE_PORT") == port, info
        assert info["listen"] == f"tcp:127.0.0.1:{port}", info
        routes = listed(gateway, app.alias)
        assert routes
        if "backend" in routes[0]:
            assert routes[0]["backend"] == f"tcp:127.0.0.1:{port}", routes[0]
    finally:
        app.stop()


def test_run_tcp_env_only(gateway):
    app = gateway.publish([PY, HTTPAPP, "--env"], tcp=True, name="tcpenv")
    try:
        s = gateway.login(app.alias, app.link)
        info = env_of(s)
        assert info["listen"] == f"tcp:127.0.0.1:{info['env']['JOBGATE_PORT']}", info
    finally:
        app.stop()


def test_run_tcp_refuses_listener_outside_app_tree(gateway):
    # The app starts a listener and lets it escape its process tree (the subshell exits,
    # so the server is re-parented): whoever holds the port is not the app (I2).
    script = f"({PY} {HTTPAPP} --port {{port}} >/dev/null 2>&1 &); exec sleep 60"
    r = gateway.cli("run", "--json", "--tcp", "--", "/bin/sh", "-c", script, timeout=60)
    try:
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert b"outside the app's process tree" in r.stderr, r.stderr
        assert b'"event":"ready"' not in r.stdout.replace(b" ", b""), r.stdout
        routes = gateway.ls_json()
        assert not any(r.get("name") == "sh" for r in routes), routes
    finally:
        # The escaped server carries the test tag; stop it now rather than at session end.
        m = re.search(rb"127\.0\.0\.1:(\d+)", r.stderr)
        if m:
            subprocess.run(["pkill", "-f", f"--port {m.group(1).decode()}"], check=False)


def test_run_name_option(gateway):
    app = gateway.publish_http(name="my-notebook")
    try:
        routes = listed(gateway, app.alias)
        assert routes and routes[0].get("name") == "my-notebook", routes
    finally:
        app.stop()


def test_exit_status_is_apps_and_route_removed(gateway):
    app = gateway.publish_http(name="exiter")
    s = gateway.login(app.alias, app.link)
    r = s.get("/exit?code=7")
    assert r.status == 200, r
    rc = app.wait_exit(10)
    assert rc == 7, f"`jobgate run` exited {rc}, the app exited 7"
    wait_for(lambda: not listed(gateway, app.alias), 5, what="the route to be removed")
    assert s.get("/hello").status == 404


def test_exit_status_when_app_fails_at_once(gateway):
    app = gateway.publish([PY, "-c", "import sys; sys.exit(3)"], wait=False)
    rc = app.wait_exit(20)
    assert rc == 3, f"`jobgate run` exited {rc}, the app exited 3 before listening"
    assert not any('"ready"' in ln for ln in app.lines), app.lines


def test_sigterm_forwarded_to_app(gateway, tmp_path):
    marker = tmp_path / "got-sigterm"
    app = gateway.publish([PY, HTTPAPP, "--unix", "{socket}", "--term-file", marker,
                           "--term-code", "42"], name="termapp")
    s = gateway.login(app.alias, app.link)
    assert s.get("/hello").status == 200
    app.proc.send_signal(signal.SIGTERM)  # to `jobgate run` only, not its group
    rc = app.wait_exit(10)
    assert marker.exists(), "the app never got SIGTERM"
    assert rc == 42, f"`jobgate run` exited {rc}, the app exited 42"
    wait_for(lambda: not listed(gateway, app.alias), 5, what="the route to be removed")


def test_app_killed_route_removed(gateway):
    app = gateway.publish([PY, HTTPAPP, "--unix", "{socket}"], name="victim")
    s = gateway.login(app.alias, app.link)
    info = env_of(s)
    os.kill(info["pid"], signal.SIGKILL)
    rc = app.wait_exit(10)
    assert rc != 0, "the app was killed; `jobgate run` must not report success"
    wait_for(lambda: not listed(gateway, app.alias), 5, what="the route to be removed")


def test_ls_link_rm(gateway):
    a = gateway.start_direct_app()
    gateway.register(a, name="lsapp")
    try:
        rows = ls_table(gateway)
        assert a.alias in [r["ALIAS"] for r in rows], rows
        routes = listed(gateway, a.alias)
        assert len(routes) == 1 and routes[0].get("name") == "lsapp", routes

        out = gateway.cli("link", a.alias)
        assert out.returncode == 0, out
        m = re.search(LINK_RE.format(port=gateway.port).encode(), out.stdout)
        assert m and m.group(1).decode() == a.alias, out.stdout
        s = gateway.login(a.alias, m.group(0).decode())
        assert s.get("/hello").status == 200

        out = gateway.cli("link", "lsapp")  # a unique name works like the alias
        assert out.returncode == 0 and a.alias.encode() in out.stdout, out

        out = gateway.cli("rm", a.alias)
        assert out.returncode == 0, out
        assert not listed(gateway, a.alias)
        assert s.get("/hello").status == 404, "session of a removed route still works"
    finally:
        a.stop()


def test_link_ttl_option(gateway, app):
    out = gateway.cli("link", app.alias, "--ttl", "90s")
    assert out.returncode == 0, out
    m = re.search(LINK_RE.format(port=gateway.port).encode(), out.stdout)
    assert m, out.stdout
    assert gateway.login(app.alias, m.group(0).decode()).get("/hello").status == 200


@pytest.mark.parametrize("args", [["link", "no-such-alias-here"], ["rm", "no-such-alias-here"]])
def test_unknown_alias_fails(gateway, args):
    out = gateway.cli(*args)
    assert out.returncode == 1, out
    assert out.stderr.strip(), "no error message"


@pytest.mark.parametrize("ttl", ["0s", "forever", "8d", "-5s"])
def test_link_bad_ttl(gateway, app, ttl):
    out = gateway.cli("link", app.alias, "--ttl", ttl)
    assert out.returncode != 0, f"--ttl {ttl} accepted: {out}"
    assert out.stderr.strip()


# --------------------------------------------------------------------------- usage


def run_plain(args, env=None, timeout=15):
    return subprocess.run([JOBGATE, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def test_help_exit_0(binaries):
    out = run_plain(["--help"])
    assert out.returncode == 0, out
    text = out.stdout.decode().lower()
    assert "usage" in text and "run" in text and "link" in text, out.stdout


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["--no-such-option"], ["run"],
                                  ["run", "--json"], ["link"], ["rm"],
                                  ["link", "a", "--ttl"], ["ls", "--bogus"]],
                         ids=lambda a: " ".join(a) or "no-args")
def test_bad_usage_exit_2(binaries, args):
    out = run_plain(args)
    assert out.returncode == 2, f"jobgate {' '.join(args)} -> {out.returncode}: {out}"
    assert out.stderr.strip(), "bad usage without a message on stderr"


def test_run_in_a_jobgate_job_takes_its_gateway(no_gateway_env):
    """JOBGATE_GATEWAY (the Slurm plugin's) stands in for -g: checked like -g, and a
    gateway that does not answer is named."""
    gw = no_gateway_env
    out = gw.cli("run", "--", "true", env_extra={"JOBGATE_GATEWAY": "http://login"})
    assert out.returncode == 2 and b"JOBGATE_GATEWAY:" in out.stderr, out
    port = free_port()
    out = gw.cli("run", "--", "true", env_extra={"JOBGATE_GATEWAY": f"https://127.0.0.1:{port}"})
    assert out.returncode == 1 and f"127.0.0.1:{port}".encode() in out.stderr, out


@pytest.fixture
def no_gateway_env(binaries):
    gw = Gateway()  # directories only; never started
    yield gw
    import shutil
    shutil.rmtree(gw.root, ignore_errors=True)


@pytest.mark.parametrize("args", [["ls"], ["link", "x"], ["rm", "x"]])
def test_no_gateway_clear_error(no_gateway_env, args):
    gw = no_gateway_env
    t0 = time.monotonic()
    out = gw.cli(*args)
    assert time.monotonic() - t0 < 5
    assert out.returncode == 1, out
    err = out.stderr.decode().lower()
    assert "gateway" in err or "jobgated" in err or str(gw.control_path).lower() in err, \
        f"unclear error: {out.stderr!r}"
    assert "traceback" not in err and len(err) < 2000


def test_no_gateway_run_fails_and_leaves_nothing(no_gateway_env, tmp_path):
    gw = no_gateway_env
    pidfile = tmp_path / "app.pid"
    t0 = time.monotonic()
    out = gw.cli("run", "--json", "--", PY, HTTPAPP, "--unix", "{socket}", "--pidfile", pidfile,
                 timeout=30)
    assert time.monotonic() - t0 < 20
    assert out.returncode == 1, out
    assert out.stderr.strip(), out
    if pidfile.exists():
        pid = int(pidfile.read_text())
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        if alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "the app was left running after `jobgate run` failed"
