"""SIGHUP applies a changed configuration file to a running shared gateway (issue 13): limits,
timeouts, lifetimes, quotas, the tunnel's and the node channel's settings at once and for
connections already open; what only a start can change (listen, domain, workers, ...) is
named in the log and left as it runs; a file that does not work changes nothing at all.
The certificate's own reload is in test_faults.py, users' CAs in test_gridmap.py."""
import signal
import time

from conftest import _finish, _gateway, build_request, wait_for

BIG = [("X-Big", "b" * 5000)]


def test_sighup_applies_limits_and_lifetimes_to_open_connections(binaries):
    gw = _gateway({}, name="reload")
    app = gw.start_direct_app()
    try:
        gw.register(app, name="hup")
        s = gw.login(app.alias, app.link)
        c = s.conn()
        try:
            assert s.get("/hello", conn=c, headers=BIG).status == 200
            ans = gw.control({"op": "link", "alias": app.alias})
            assert 500 < ans["expires"] - time.time() <= 600, ans
            lines = gw.reconfigure({"limits": {"header_bytes": "4096"}, "links": {"ttl": "1h"}})
            assert "configuration applied ([limits] header_bytes, [links] ttl)" in lines, lines
            assert "next start" not in lines, lines
            # The connection opened before goes on, under the new limit.
            assert s.get("/hello", conn=c).status == 200
            c.send(build_request("GET", "/hello", s.host, headers=BIG, cookie=s.cookie))
            assert c.read_head().status == 431
        finally:
            c.close()
        assert s.get("/hello", headers=BIG).status == 431, "a new connection has the old limit"
        assert s.get("/hello", headers=[("X-Big", "b" * 2000)]).status == 200
        ans = gw.control({"op": "link", "alias": app.alias})
        assert 3500 < ans["expires"] - time.time() <= 3600, ans
        # Read again without a change: said so, nothing else.
        lines = gw.reconfigure({})
        assert "configuration applied (nothing changed)" in lines, lines
    finally:
        app.stop()
        _finish(gw)


def test_sighup_leaves_what_only_a_start_changes_and_refuses_a_file_that_does_not_work(
        binaries):
    gw = _gateway({"limits": {"header_bytes": "4096"}}, name="reload2")
    app = gw.start_direct_app()
    try:
        gw.register(app, name="hup2")
        s = gw.login(app.alias, app.link)
        lines = gw.reconfigure({"gateway": {"domain": "apps.example.test", "workers": "3"},
                                "quota": {"routes": "5"}})
        assert ("taken only at the next start: [gateway] domain, [gateway] workers"
                in lines), lines
        assert "configuration applied ([quota] routes)" in lines, lines
        hello = gw.control({"op": "hello"})
        assert hello["domain"] == "localhost", hello
        assert s.get("/hello").status == 200, "the app is not served under its domain any more"

        # An error in the file, a node user who does not exist, a CA that cannot be read:
        # all stays as it was (header_bytes changed in the same file is not taken either).
        for change, why in (
                ({"limits": {"header_bytes": "12"}}, "out of range"),
                ({"limits": {"header_bytes": "65536"}, "slurm": {"node_users": "nosuchuser9"}},
                 "no such user 'nosuchuser9'"),
                ({"limits": {"header_bytes": "65536"}, "slurm": {"node_users": None},
                  "tunnel": {"client_ca": "/nonexistent/ca.pem", "gridmap": "/nonexistent/gm"}},
                 "client_ca: cannot load /nonexistent/ca.pem")):
            lines = gw.reconfigure(change, expect="SIGHUP: nothing applied")
            assert why in lines, lines
            assert "configuration applied" not in lines, lines
            assert s.get("/hello", headers=BIG).status == 431, f"applied: {change}"
        lines = gw.reconfigure({"tunnel": {"client_ca": None, "gridmap": None}})
        assert "[limits] header_bytes" in lines, lines
        assert s.get("/hello", headers=BIG).status == 200
    finally:
        app.stop()
        _finish(gw)


def test_sighup_in_personal_mode_reads_the_certificate_again(binaries):
    """No file in personal mode: SIGHUP reads the self-signed pair again; one that does not
    load keeps what runs, and the gateway goes on serving."""
    gw = _gateway(None, name="reload-personal")
    try:
        start = len(gw.log_path.read_bytes())
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"SIGHUP: certificate read again" in gw.log_path.read_bytes()[start:],
                 5, what="the reload")
        crt = gw.state_dir / "tls.crt"
        crt.write_text("not a certificate\n")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"SIGHUP: keeping the certificate in use" in
                 gw.log_path.read_bytes()[start:], 5, what="the refused reload")
        c = gw.connect("nothing")
        try:
            c.send(build_request("GET", "/", gw.host("nothing")))
            assert c.read_head().status == 404
        finally:
            c.close()
        gw.assert_alive()
    finally:
        _finish(gw)


def test_sighup_raising_the_head_limit_counts_on_open_connections(binaries):
    """A head larger than the read buffer an open connection was given at its start (256 KiB)
    is read whole once SIGHUP raised [limits] header_bytes (it stalled into a 408 before)."""
    gw = _gateway({"timeouts": {"request_head": "3s"}}, name="reload-head")
    try:
        c = gw.connect("nothing")
        try:
            c.send(build_request("GET", "/", gw.host("nothing")))
            assert c.read_response("GET").status == 404
            lines = gw.reconfigure({"limits": {"header_bytes": "1048576"}})
            assert "[limits] header_bytes" in lines, lines
            big = [(f"X-Big-{i}", "b" * 8000) for i in range(40)]  # 320 KB
            c.send(build_request("GET", "/", gw.host("nothing"), headers=big))
            assert c.read_response("GET").status == 404
        finally:
            c.close()
    finally:
        _finish(gw)
