"""Fixtures and helpers for jobgate's integration tests.

Every test talks to real binaries (build/jobgated, build/jobgate, or $JOBGATE_BUILD) on
127.0.0.1 only. Each gateway gets fresh HOME / XDG_STATE_HOME / XDG_RUNTIME_DIR
directories and a free port; every process started here runs in its own process group
and carries JOBGATE_TEST_TAG=<uuid> in its environment, so that teardown can end it
(and anything it started) by pid even when a test fails half way.
"""
import contextlib
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest

# The fixtures of the multi-host tests (topology, login_gateway; sshd_server, login_sshd),
# for every test module without an import of its own.
pytest_plugins = ["netns", "sshd"]

HERE = pathlib.Path(__file__).resolve().parent
APPS = HERE / "apps"
HTTPAPP = str(APPS / "httpapp.py")
WSAPP = str(APPS / "wsapp.py")
REPO = HERE.parent.parent
BUILD = pathlib.Path(os.environ.get("JOBGATE_BUILD") or (REPO / "build")).resolve()
JOBGATED = str(BUILD / "jobgated")
JOBGATE = str(BUILD / "jobgate")
# Debian's interpreter (with python3-websockets) runs the test apps, whatever runs pytest.
PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

COOKIE = "__Host-jobgate"
TAG = uuid.uuid4().hex
MiB = 1 << 20

# The byte stream the test app serves and the upload tests send: byte i == i % 256.
BLOCK = bytes(range(256)) * 256  # 64 KiB
BLOCK2 = BLOCK * 2


# --------------------------------------------------------------------------- processes

_procs = []          # every Popen started here
_logs = {}           # label -> path of logs worth showing when a test fails


def spawn(args, env=None, **kw):
    env = dict(os.environ if env is None else env)
    env["JOBGATE_TEST_TAG"] = TAG
    env.setdefault("PYTHONUNBUFFERED", "1")
    p = subprocess.Popen([str(a) for a in args], env=env, start_new_session=True, **kw)
    _procs.append(p)
    return p


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(p, timeout=5.0, sig=signal.SIGTERM):
    """Ends p and its process group: sig first, SIGKILL after timeout."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)


def pids_marked(marker):
    """Pids of live processes whose environment holds the line `marker` ("NAME=value")."""
    m = marker.encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if m in f.read().split(b"\0"):
                    out.append(int(d))
        except OSError:
            pass
    return out


def tagged_pids():
    """Pids of live processes started (directly or not) by this test session."""
    return pids_marked(f"JOBGATE_TEST_TAG={TAG}")


def sweep_tagged():
    for pid in tagged_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def pytest_sessionfinish(session, exitstatus):
    for p in _procs:
        kill_group(p, timeout=2)
    sweep_tagged()


def tail(path, lines=60):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"({e})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for label, path in list(_logs.items()):
            rep.sections.append((f"log: {label} ({path})", tail(path)))


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    """No test may hang the suite: SIGALRM turns a hang into a failure."""
    m = request.node.get_closest_marker("timeout")
    secs = int(m.args[0]) if m else (900 if request.node.get_closest_marker("slow") else 90)

    def on_alarm(signum, frame):
        raise TimeoutError(f"test still running after {secs} s (a hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def wait_for(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unix_connectable(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def tcp_connectable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def mkdtemp(prefix):
    # Short paths: a UNIX socket path must fit in 107 bytes.
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def vmhwm(pid):
    """The peak RSS of process pid, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def start_stalled_transfer(s, direction, n=1 << 30, timeout=30):
    """On a new connection of session s, a transfer that stalls once the buffers are full:
    a download of n bytes whose body is never read, or an upload of n bytes to an app that
    does not read it for a minute (sent from a thread until the connection closes). Returns
    the connection; the caller closes it."""
    c = s.conn(timeout=timeout)
    if direction == "download":
        c.send(build_request("GET", f"/bytes?n={n}", s.host, cookie=s.cookie))
        assert c.read_head().status == 200  # and then never read again
        return c
    c.send(build_request("POST", "/sink?delay=60", s.host, cookie=s.cookie,
                         headers=[("Content-Length", str(n))]))

    def send_body():
        chunk = b"u" * (1 << 20)
        try:
            for _ in range(n >> 20):
                c.sock.sendall(chunk)
        except OSError:
            pass  # the caller closed it

    c.sender = threading.Thread(target=send_body, daemon=True)  # close() stops it
    c.sender.start()
    return c


def cpu_seconds(pid):
    """User + system CPU time of process pid (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def script_app(script, sock, *args, prefix=()):
    """A one-off app for one test: `PY -c script SOCK ARGS...` (after prefix, e.g.
    as_user(NOBODY)) in a group of its own; the block runs once SOCK exists, and the app
    is killed when it ends."""
    p = spawn([*prefix, PY, "-c", script, sock, *args], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: pathlib.Path(sock).exists(), 10, what=f"the app's socket {sock}")
        yield p
    finally:
        kill_group(p, sig=signal.SIGKILL)


# --------------------------------------------------------------------------- another user

NOBODY = 65534


def as_user(uid):
    """The argv prefix that runs a command as uid (group uid, no other groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def need_second_user(what):
    """Skips the test unless it can run a command as another user (root, and setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip(f"needs root and setpriv to run a second user's {what}")


_CONTROL_AS = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_error": e.strerror})); sys.exit(0)
f = s.makefile("rwb")
out = []
for q in json.loads(sys.argv[2]):
    try:
        f.write(json.dumps(q).encode() + b"\\n"); f.flush()
    except OSError:
        pass  # closed on us: what it answered first is still to be read
    try:
        line = f.readline()
    except OSError:
        line = b""
    out.append(json.loads(line) if line else None)
print(json.dumps(out))
"""


def control_as(uid, path, reqs):
    """Sends reqs on the control socket at path as user uid: the list of answers (None where
    the gateway closed without one), or {"connect_error": strerror}."""
    p = subprocess.run([*as_user(uid), PY, "-c", _CONTROL_AS, str(path), json.dumps(reqs)],
                       capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p
    return json.loads(p.stdout)


# --------------------------------------------------------------------------- HTTP over TLS


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Closed(Exception):
    """The peer closed (or reset) the connection."""


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version, self.status, self.reason = version, status, reason
        self.headers = headers  # list of (name, value) as received
        self.raw_head = raw_head
        self.body = b""
        self.chunked = False
        self.chunk_sizes = []
        self.trailers = []
        self.interim = []  # 1xx responses before this one

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.reason!r} {self.headers!r} body={self.body[:200]!r}>"


def parse_head(raw):
    text = raw.decode("latin-1")
    lines = text[:-4].split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise AssertionError(f"malformed status line from the gateway: {lines[0]!r}")
    headers = []
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        assert sep, f"malformed response field line {ln!r}"
        headers.append((k, v.strip(" \t")))
    return Response(m.group(1), int(m.group(2)), m.group(3) or "", headers, raw)


class RawConn:
    """One TLS connection to the gateway, with byte-level control of what is sent."""

    def __init__(self, port, sni, timeout=10.0, alpn=True, raw=None, source=None):
        """raw: an already connected TCP socket (default: one to 127.0.0.1:port, from the
        loopback address source when given)."""
        self.port, self.sni = port, sni
        if raw is None:
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                           source_address=(source, 0) if source else None)
        ctx = client_ctx()
        if not alpn:
            ctx.set_alpn_protocols([])
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except Exception:
            raw.close()
            raise
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False

    def close(self):
        sender = getattr(self, "sender", None)
        if sender is not None:
            # A thread still sending on it (start_stalled_transfer): stop it first, or its next
            # send could go to whatever file reuses the descriptor number once it is closed.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            sender.join(10)
            self.sender = None
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, n=256 * 1024):
        if self.eof:
            return False
        try:
            d = self.sock.recv(n)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_head(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                raw = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return parse_head(raw)
            if len(self.buf) > limit:
                raise AssertionError("response head too long")
            if not self._fill():
                raise Closed(f"connection closed before a complete response head "
                             f"(got {bytes(self.buf[:200])!r})")

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise Closed(f"connection closed with {n - len(self.buf)} of {n} body bytes missing")
        d = bytes(self.buf[:n])
        del self.buf[:n]
        return d

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                d = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return d
            if not self._fill():
                raise Closed("connection closed inside a chunked body")

    def iter_body(self, resp, method="GET"):
        """Yields the response body in pieces, following its framing."""
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        te = ",".join(resp.header_all("Transfer-Encoding")).lower()
        if "chunked" in te:
            resp.chunked = True
            while True:
                line = self.read_line()
                size = int(line.split(b";")[0].strip(), 16)
                resp.chunk_sizes.append(size)
                if size == 0:
                    while True:
                        t = self.read_line()
                        if not t:
                            return
                        resp.trailers.append(t.decode("latin-1"))
                left = size
                while left:
                    if not self.buf and not self._fill():
                        raise Closed("connection closed inside a chunk")
                    k = min(left, len(self.buf))
                    d = bytes(self.buf[:k])
                    del self.buf[:k]
                    left -= k
                    yield d
                assert self.read_exact(2) == b"\r\n", "chunk data not followed by CRLF"
        elif resp.header("Content-Length") is not None:
            left = int(resp.header("Content-Length"))
            while left:
                if not self.buf and not self._fill():
                    raise Closed(f"connection closed with {left} body bytes missing")
                k = min(left, len(self.buf))
                d = bytes(self.buf[:k])
                del self.buf[:k]
                left -= k
                yield d
        else:
            while True:
                if self.buf:
                    d = bytes(self.buf)
                    self.buf.clear()
                    yield d
                if not self._fill():
                    return

    def read_response(self, method="GET"):
        interim = []
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        resp.body = b"".join(self.iter_body(resp, method))
        return resp

    def expect_close(self, timeout=2.0):
        """Reads until the peer closes; fails if it does not within timeout. Returns what was read."""
        deadline = time.monotonic() + timeout
        got = bytearray(self.buf)
        self.buf.clear()
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the gateway did not close the connection within {timeout} s "
                                     f"(read {bytes(got[:200])!r})")
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
                d = b""
            except ssl.SSLError:
                d = b""
            if not d:
                self.eof = True
            got += d
        return bytes(got)

    def quiet_for(self, seconds):
        """True if nothing at all arrives for `seconds` (and the connection stays open or closes)."""
        self.sock.settimeout(seconds)
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
        if d:
            self.buf += d
            return False
        self.eof = True
        return True


def build_request(method, target, host, headers=(), body=None, chunked=False, cookie=None,
                  version="HTTP/1.1", chunk_size=None):
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    if cookie is not None:
        lines.append(f"Cookie: {COOKIE}={cookie}")
    names = set()
    for k, v in headers:
        lines.append(f"{k}: {v}")
        names.add(k.lower())
    if body is not None and not chunked and "content-length" not in names \
            and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        if chunked:
            step = chunk_size or max(1, len(body))
            for i in range(0, len(body), step):
                piece = body[i: i + step]
                out += b"%x\r\n" % len(piece) + piece + b"\r\n"
            out += b"0\r\n\r\n"
        else:
            out += body
    return out


def parse_set_cookie(value):
    parts = [p.strip() for p in value.split(";")]
    name, _, val = parts[0].partition("=")
    attrs = {}
    for a in parts[1:]:
        k, _, v = a.partition("=")
        attrs[k.strip().lower()] = v.strip()
    return name.strip(), val.strip(), attrs


# --------------------------------------------------------------------------- control socket


class Control:
    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.f = self.sock.makefile("rwb")

    def call(self, req):
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        line = self.f.readline()
        assert line, f"control socket closed without answering {req!r}"
        return json.loads(line)

    def close(self):
        with contextlib.suppress(OSError):
            self.f.close()
            self.sock.close()


# --------------------------------------------------------------------------- apps


class DirectApp:
    """A test app started by the tests themselves (not by `jobgate run`)."""

    def __init__(self, proc, sock=None, port=None, dir=None):
        self.proc, self.sock, self.port, self.dir = proc, sock, port, dir
        self.alias = None
        self.link = None

    def kill(self):
        kill_group(self.proc, timeout=2, sig=signal.SIGKILL)

    def stop(self):
        kill_group(self.proc, timeout=3)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class PublishedApp:
    """An app run under `jobgate run [--json]`."""

    def __init__(self, proc, log_path, json_mode):
        self.proc = proc
        self.log_path = log_path
        self.json_mode = json_mode
        self.lines = []
        self.q = queue.Queue()
        self.alias = self.url = self.link = self.expires = None
        self.ready = None
        t = threading.Thread(target=self._reader, daemon=True)
        t.start()

    @classmethod
    def launch(cls, args, log_path, json_mode, wait, into, popen=spawn, **kw):
        """Starts `jobgate run ...` (args) with popen(args, **kw) (spawn, or a namespace's),
        its stdout read here and its stderr in log_path; adds it to `into` (the list its
        owner stops at cleanup) before waiting for the ready event (json_mode and wait)."""
        with open(log_path, "ab") as log:
            proc = popen(args, stdout=subprocess.PIPE, stderr=log, **kw)
        app = cls(proc, log_path, json_mode)
        _logs[f"jobgate run {id(app)}"] = log_path
        into.append(app)
        if wait and json_mode:
            app.wait_ready()
        return app

    def _reader(self):
        for line in self.proc.stdout:
            line = line.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def next_line(self, timeout):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return ""

    def events(self):
        out = []
        for ln in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(ln))
        return out

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"`jobgate run` printed no ready event within {timeout} s; "
                                     f"stdout so far: {self.lines!r}; stderr: {tail(self.log_path)}")
            line = self.next_line(min(left, 0.5))
            if line is None:
                rc = self.proc.wait(5)
                raise AssertionError(f"`jobgate run` exited ({rc}) before ready; stdout: "
                                     f"{self.lines!r}; stderr: {tail(self.log_path)}")
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # test_cli checks that every line is JSON; here we only need "ready"
            if isinstance(ev, dict) and ev.get("event") == "ready":
                self.ready = ev
                self.alias, self.url = ev.get("alias"), ev.get("url")
                self.link, self.expires = ev.get("link"), ev.get("expires")
                return ev

    def wait_exit(self, timeout=10):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`jobgate run` still running after {timeout} s")

    def stop(self):
        kill_group(self.proc, timeout=5)
        _logs.pop(f"jobgate run {id(self)}", None)


# --------------------------------------------------------------------------- gateway


class Session:
    """A browser-like client holding the session cookie for one app."""

    def __init__(self, gw, alias, cookie):
        self.gw, self.alias, self.cookie = gw, alias, cookie

    @property
    def host(self):
        return self.gw.host(self.alias)

    def conn(self, timeout=10.0):
        return self.gw.connect(self.alias, timeout=timeout)

    def request(self, method, target, headers=(), body=None, chunked=False, conn=None,
                cookie=True, timeout=10.0):
        own = conn is None
        c = conn or self.conn(timeout)
        try:
            c.send(build_request(method, target, self.host, headers, body, chunked,
                                 cookie=self.cookie if cookie else None))
            return c.read_response(method)
        finally:
            if own:
                c.close()

    def logout(self, **kw):
        """What the logout button does: a POST from the app's own page."""
        return self.request("POST", "/_jobgate/logout", body=b"", **kw)

    def get(self, target, **kw):
        return self.request("GET", target, **kw)


class Gateway:
    def __init__(self, config=None, name="personal", verbose=False):
        """config: None for personal mode, else a dict {section: {key: value}} merged over the
        shared-mode basics (listen, domain, state_dir, control_socket)."""
        self.root = mkdtemp("jg-")
        self.name = name
        self.port = free_port()
        self.domain = "localhost"
        self.home = self.root / "home"
        self.state_home = self.root / "state"
        self.runtime = self.root / "run"
        for d in (self.home, self.state_home, self.runtime):
            d.mkdir(mode=0o700)
        self.log_path = self.root / "jobgated.log"
        self.config_path = None
        self.shared = config is not None
        if not self.shared:
            self.state_dir = self.state_home / "jobgate"
            self.control_path = self.runtime / "jobgate" / "control.sock"
        else:
            self.state_dir = self.root / "srv-state"
            self.control_path = self.root / "srv-run" / "control.sock"
            self.state_dir.mkdir(mode=0o700)
            (self.root / "srv-run").mkdir(mode=0o755)
            sections = {"gateway": {"listen": f"127.0.0.1:{self.port}", "domain": self.domain,
                                    "state_dir": str(self.state_dir),
                                    "control_socket": str(self.control_path)}}
            if os.geteuid() == 0:
                # A shared gateway started as root must be told whom to become; the tests
                # that need root's powers (connecting to any user's socket) say: stay root.
                sections["gateway"]["user"] = "root"

            for sec, kv in config.items():
                sections.setdefault(sec, {}).update(kv)
            for kv in sections.values():  # None drops a key (e.g. "user")
                for k in [k for k, v in kv.items() if v is None]:
                    del kv[k]
            self.domain = sections["gateway"]["domain"]
            text = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n"
                           for sec, kv in sections.items())
            self.config_path = self.root / "jobgated.conf"
            self.config_path.write_text(text)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JOBGATE_"))}
        self.env.update(HOME=str(self.home), XDG_STATE_HOME=str(self.state_home),
                        XDG_RUNTIME_DIR=str(self.runtime), JOBGATE_TEST_TAG=TAG)
        if self.shared:
            # The CLI finds a shared gateway's control socket only when told.
            self.env["JOBGATE_CONTROL"] = str(self.control_path)
        self.verbose = verbose
        self.proc = None
        self.stopped_on_purpose = False
        self.crashed = None
        self._published = []
        self._direct = []

    # -- lifecycle
    def args(self):
        v = ["-v"] if self.verbose else []
        if self.shared:
            return [JOBGATED, "-f", *v, "-c", self.config_path]
        return [JOBGATED, "-f", *v, "-l", f"127.0.0.1:{self.port}"]

    def start(self, timeout=10):
        self.stopped_on_purpose = False
        log = open(self.log_path, "ab")
        self.proc = spawn(self.args(), env=self.env, stdin=subprocess.DEVNULL,
                          stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _logs[f"jobgated {self.name}:{self.port}"] = self.log_path
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jobgated exited with {self.proc.returncode} during startup:\n"
                                     f"{tail(self.log_path)}")
            if unix_connectable(self.control_path) and tcp_connectable(self.port):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"jobgated not ready within {timeout} s (control socket {self.control_path} "
                    f"connectable: {unix_connectable(self.control_path)}, port {self.port} "
                    f"accepting: {tcp_connectable(self.port)}):\n{tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout=5):
        """SIGTERM to jobgated itself; returns its exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, timeout=1, sig=signal.SIGKILL)
                rc = None
        else:
            rc = self.proc.returncode
        kill_group(self.proc, timeout=1, sig=signal.SIGKILL)
        return rc

    def assert_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"jobgated died (exit status {self.proc.returncode}):\n"
                                 f"{tail(self.log_path)}")

    def reconfigure(self, changes, expect="SIGHUP: configuration applied"):
        """Shared mode: merges changes ({section: {key: value, or None to drop it}}) into the
        configuration file, sends SIGHUP and waits for `expect` among the log lines written
        since. Returns those lines."""
        sections, sec = {}, None
        for line in self.config_path.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                sec = sections.setdefault(line[1:-1], {})
            elif "=" in line:
                k, v = (x.strip() for x in line.split("=", 1))
                sec[k] = v
        for name, kv in changes.items():
            for k, v in kv.items():
                if v is None:
                    sections.get(name, {}).pop(k, None)
                else:
                    sections.setdefault(name, {})[k] = v
        self.config_path.write_text("".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n"
            for name, kv in sections.items()))
        start = len(self.log_path.read_bytes())
        self.proc.send_signal(signal.SIGHUP)
        since = lambda: self.log_path.read_bytes()[start:].decode(errors="replace")
        wait_for(lambda: expect in since(), 5,
                 what=f"'{expect}' in the log after SIGHUP; it has:\n{since()}")
        self.assert_alive()
        return since()

    def cleanup(self):
        for a in self._published:
            a.stop()
        for a in self._direct:
            a.stop()
        died = (self.proc is not None and self.proc.poll() is not None
                and not self.stopped_on_purpose)
        rc = self.proc.returncode if died else None
        self.stop()
        _logs.pop(f"jobgated {self.name}:{self.port}", None)
        if died:
            self.crashed = rc
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def vmhwm(self):
        return vmhwm(self.proc.pid)

    # -- names
    def host(self, alias):
        return f"{alias}.{self.domain}:{self.port}"

    def sni(self, alias):
        return f"{alias}.{self.domain}"

    def connect(self, alias, timeout=10.0):
        return RawConn(self.port, self.sni(alias), timeout)

    # -- control socket and CLI
    def control(self, req):
        c = Control(self.control_path)
        try:
            return c.call(req)
        finally:
            c.close()

    def new_link(self, alias, ttl=None):
        req = {"op": "link", "alias": alias}
        if ttl is not None:
            req["ttl"] = ttl
        ans = self.control(req)
        assert ans.get("ok"), f"control link failed: {ans}"
        return ans["link"]

    def cli(self, *args, timeout=20, env_extra=None):
        env = dict(self.env)
        env.update(env_extra or {})
        try:
            return subprocess.run([JOBGATE, *map(str, args)], env=env, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"`jobgate {' '.join(map(str, args))}` still running after "
                                 f"{timeout} s (stdout {e.stdout!r}, stderr {e.stderr!r})")

    def routes(self):
        """Every route in the control socket's list, page after page."""
        req = {"op": "list"}
        while True:
            ans = self.control(req)
            assert ans.get("ok"), ans
            yield from ans["routes"]
            if not ans.get("next"):
                return
            req = {"op": "list", "after": ans["next"]}

    def route(self, alias):
        """alias's entry in the control socket's list, or None."""
        return next((r for r in self.routes() if r["alias"] == alias), None)

    def route_by_name(self, name):
        """The entry of the (first) route called name in the control socket's list, or None."""
        return next((r for r in self.routes() if r["name"] == name), None)

    def ls_json(self, **kw):
        """`jobgate ls --json` (kw: what cli() takes): asserts exit status 0 and returns the
        routes, the one JSON list it prints."""
        out = self.cli("ls", "--json", **kw)
        assert out.returncode == 0, out
        routes = json.loads(out.stdout)
        assert isinstance(routes, list), out.stdout
        return routes

    # -- apps
    def publish(self, app_cmd, json_mode=True, tcp=False, name=None, wait=True, extra=()):
        """`jobgate run [--json] [--tcp] [-n NAME] -- app_cmd`; app_cmd may hold {socket}/{port}."""
        args = [JOBGATE, "run"]
        if json_mode:
            args.append("--json")
        if tcp:
            args.append("--tcp")
        if name:
            args += ["-n", name]
        args += list(extra)
        args += ["--", *app_cmd]
        return PublishedApp.launch(args, self.root / f"run-{len(self._published)}.log",
                                   json_mode, wait, self._published, env=self.env,
                                   stdin=subprocess.DEVNULL)

    def publish_http(self, tcp=False, name="httpapp", extra_app_args=()):
        where = ["--port", "{port}"] if tcp else ["--unix", "{socket}"]
        return self.publish([PY, HTTPAPP, *where, *extra_app_args], tcp=tcp, name=name)

    def start_direct_app(self, script=HTTPAPP, tcp=False, extra=()):
        d = mkdtemp("jga-")
        log_path = d / "app.log"
        log = open(log_path, "ab")
        if tcp:
            port = free_port()
            proc = spawn([PY, script, "--port", port, *extra], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT)
            app = DirectApp(proc, port=port, dir=d)
            ready = lambda: tcp_connectable(port)  # noqa: E731
        else:
            sock = d / "app.sock"
            proc = spawn([PY, script, "--unix", sock, *extra], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT)
            app = DirectApp(proc, sock=str(sock), dir=d)
            ready = lambda: unix_connectable(sock)  # noqa: E731
        log.close()
        self._direct.append(app)
        try:
            wait_for(lambda: ready() or proc.poll() is not None, 10, what="the test app to listen")
        except AssertionError:
            raise AssertionError(f"test app did not start: {tail(log_path)}")
        assert proc.poll() is None, f"test app exited: {tail(log_path)}"
        return app

    def register(self, app, name="direct", pid=True, starting=False, **extra):
        req = {"op": "register", "name": name}
        if app.sock:
            req["socket"] = app.sock
        else:
            req["port"] = app.port
        if pid:
            req["pid"] = app.proc.pid
        if starting:
            req["starting"] = True
        req.update(extra)
        ans = self.control(req)
        assert ans.get("ok"), f"control register failed: {ans}"
        app.alias, app.link = ans["alias"], ans["link"]
        return ans

    def login(self, alias, link):
        """Redeems a link like a browser and returns a Session holding the cookie."""
        target = link_target(link)
        with self.connect(alias) as c:
            c.send(build_request("GET", target, self.host(alias)))
            r = c.read_response()
        assert r.status == 303, f"redeeming {link} gave {r!r}"
        for v in r.header_all("Set-Cookie"):
            name, val, _ = parse_set_cookie(v)
            if name == COOKIE and val:
                return Session(self, alias, val)
        raise AssertionError(f"no {COOKIE} cookie set by redeem: {r!r}")


def link_target(link):
    u = urllib.parse.urlsplit(link)
    return u.path + (("?" + u.query) if u.query else "")


# --------------------------------------------------------------------------- fixtures


def _missing_message():
    missing = [p for p in (JOBGATED, JOBGATE) if not os.access(p, os.X_OK)]
    if missing:
        return (f"jobgate is not built: {', '.join(missing)} missing or not executable "
                f"(run `make`, or point JOBGATE_BUILD at the build directory)")
    return None


def pytest_sessionstart(session):
    msg = _missing_message()
    if msg and not session.config.option.collectonly:
        pytest.exit(msg, returncode=1)  # a failure, not a skip


@pytest.fixture(scope="session")
def binaries():
    msg = _missing_message()
    if msg:
        pytest.fail(msg, pytrace=False)
    return BUILD


def start_gateway(gw):
    """gw (a Gateway or NsGateway), started; cleaned up if it does not start. A fixture then
    yields it and calls _finish(gw)."""
    try:
        gw.start()
    except BaseException:
        gw.cleanup()
        raise
    return gw


@contextlib.contextmanager
def one_cpu():
    """Processes started inside run on one CPU (they inherit the affinity): a jobgated
    started so has one worker."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _gateway(config=None, name="personal", verbose=False):
    return start_gateway(Gateway(config=config, name=name, verbose=verbose))


def _finish(gw):
    gw.cleanup()
    if gw.crashed is not None:
        raise AssertionError(f"jobgated died during the tests (exit status {gw.crashed}); "
                             f"log in {gw.log_path}:\n{tail(gw.log_path)}")


@pytest.fixture(scope="module")
def gateway(binaries):
    """A personal-mode gateway shared by the tests of one module."""
    gw = _gateway()
    yield gw
    _finish(gw)


@pytest.fixture
def fresh_gateway(binaries):
    """A personal-mode gateway of this test alone."""
    gw = _gateway(name="fresh")
    yield gw
    _finish(gw)


@pytest.fixture
def make_gateway(binaries):
    """Factory: make_gateway(config_dict_or_None) -> started Gateway, cleaned up afterwards."""
    made = []

    def make(config=None, name="custom", verbose=False):
        gw = _gateway(config, name, verbose)
        made.append(gw)
        return gw

    yield make
    errors = []
    for gw in made:
        try:
            _finish(gw)
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError("\n".join(errors))


@pytest.fixture(scope="module")
def app(gateway):
    """The HTTP test app published through `jobgate run --json` (unix socket)."""
    a = gateway.publish_http()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def client(gateway, app):
    """A logged-in client of `app` (its link redeemed, the session cookie kept)."""
    return gateway.login(app.alias, app.link)


class Munged:
    """A private munged (own key, socket and files in a temp dir): MUNGE identities for
    tunnel tests without touching a system munged."""
    MUNGED, MUNGEKEY, MUNGE = "/usr/sbin/munged", "/usr/sbin/mungekey", "/usr/bin/munge"

    def __init__(self):
        self.dir = mkdtemp("jgm-")
        os.chmod(self.dir, 0o711)  # munged insists that everyone may reach its socket
        self.socket = str(self.dir / "munge.sock")
        key = self.dir / "munge.key"
        subprocess.run([self.MUNGEKEY, "--create", f"--keyfile={key}"], check=True,
                       capture_output=True)
        self.proc = spawn([self.MUNGED, "--foreground", f"--key-file={key}",
                           f"--socket={self.socket}", f"--pid-file={self.dir / 'munged.pid'}",
                           f"--log-file={self.dir / 'munged.log'}",
                           f"--seed-file={self.dir / 'munged.seed'}"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        wait_for(lambda: unix_connectable(self.socket) or self.proc.poll() is not None, 10,
                 what="munged to listen")
        assert self.proc.poll() is None, "munged exited at start"

    def encode(self, payload, ttl=None, uid=None):
        """A credential for payload, of this process's user or of uid (setpriv)."""
        args = [self.MUNGE, f"--socket={self.socket}", "-s", payload]
        if uid is not None:
            args = [*as_user(uid), *args]
        if ttl:
            args += ["-t", str(ttl)]
        return subprocess.run(args, check=True, capture_output=True).stdout.decode().strip()

    def stop(self):
        kill_group(self.proc, timeout=3)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def munged():
    if not all(os.access(p, os.X_OK) for p in (Munged.MUNGED, Munged.MUNGEKEY, Munged.MUNGE)):
        pytest.skip("MUNGE is not installed (scripts/install-deps test installs munge)")
    m = Munged()
    yield m
    m.stop()
