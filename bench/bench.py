#!/usr/bin/python3
"""jobgate against its peers: the benchmark suite (see bench/README.md).

    bench/bench.py [--build DIR] [--smoke] [--contenders a,b] [--scenarios A,B,...]

Every contender puts TLS 1.3 (or, on the tunnel paths, its own transport) in front of the
same app (bench/nginx-app.conf.in on a UNIX socket), everything on 127.0.0.1, under one
`mktemp -d` directory; every process started here is stopped by pid on exit, also on
failure or a signal. Contenders alternate within each round, figures are medians over the
rounds. The exit status is non-zero only when the benchmark could not run: a tool missing,
a contender that did not start, a scenario that got no successful answer. Python 3 stdlib
(and python3-websockets for scenario E) only.
"""
import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import idle  # scenario I, beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
WSAPP = os.path.join(REPO, "tests", "integration", "apps", "wsapp.py")
HZ = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
FRONT = ["jobgate", "nginx", "haproxy", "apache", "chp", "direct"]
TUNNEL = ["jobgate-tunnel", "ssh", "stunnel"]
ALL_CONTENDERS = FRONT + TUNNEL
ALL_SCENARIOS = ["C", "A", "N", "B", "E", "D", "T", "R", "I", "P"]
COOKIE = "__Host-jobgate"


class BenchError(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def which(name):
    p = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not p:
        raise BenchError(f"{name} not found (`scripts/install-deps bench` installs it)")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, proc=None, logfile=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = ""
    if logfile and os.path.exists(logfile):
        with open(logfile, errors="replace") as f:
            tail = "".join(f.readlines()[-30:])
    raise BenchError(f"{what} did not start" + (f" (exited {proc.returncode})" if proc is not None
                                                 and proc.poll() is not None else "")
                     + (f"; its log:\n{tail}" if tail else ""))


def tcp_open(port):
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def unix_open(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(path)
    return True


def render(template, out, values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", "\n".join(ln for ln in text.splitlines()
                                              if not ln.lstrip().startswith(("#", ";"))))
    if left:
        raise BenchError(f"{template}: no value for {sorted(set(left))}")
    with open(out, "w") as f:
        f.write(text)
    return out


# ------------------------------------------------------------------ processes and /proc

def children(pid):
    out = []
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def tree(pids):
    seen, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += children(p)
    return seen


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pids, reaped=True):
    """User + system CPU of pids (all threads); with reaped, also of their children that
    exited and were waited for (cutime, cstime): an sshd's connection processes, say."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = stat_fields(p)
            total += int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)
    return total / HZ


def status_kb(pids, field):
    total = 0
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    total += int(ln.split()[1])
    return total


def rollup_kb(pid, field):
    """A field of /proc/PID/smaps_rollup in KiB (0 when unreadable)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for ln in f:
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    return 0


class Procs:
    """Every process the benchmark starts; stop_all() stops them by pid (descendants
    first, found through /proc), TERM then KILL."""

    def __init__(self):
        self.procs = []

    def spawn(self, argv, logfile, env=None, **kw):
        with open(logfile, "ab") as log_f:
            p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                 stdout=kw.pop("stdout", log_f), stderr=log_f, env=env,
                                 start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5):
        pids = [q for q in tree([p.pid]) if q != p.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(OSError):
                os.kill(p.pid, sig)
            for q in pids:
                with contextlib.suppress(OSError):
                    os.kill(q, sig)
            try:
                p.wait(timeout)
                deadline = time.monotonic() + 1
                while any(os.path.exists(f"/proc/{q}") and not _zombie(q) for q in pids) \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)
                if sig == signal.SIGTERM and any(os.path.exists(f"/proc/{q}") and not _zombie(q)
                                                 for q in pids):
                    continue
                break
            except subprocess.TimeoutExpired:
                continue
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p, timeout=3)


def _zombie(pid):
    try:
        return stat_fields(pid)[0] == "Z"
    except (OSError, IndexError):
        return True


# ------------------------------------------------------------------ the harness

class Harness:
    def __init__(self, args):
        self.args = args
        self.build = args.build
        self.procs = Procs()
        self.tmp = tempfile.mkdtemp(prefix="jobgate-bench.")
        self.root = os.geteuid() == 0
        # As root, Apache's children run as www-data: they must reach the app's socket.
        os.chmod(self.tmp, 0o711 if self.root else 0o700)
        for d in ("www", "tmp", "app", "logs"):
            os.makedirs(os.path.join(self.tmp, d), mode=0o700)
        os.chmod(os.path.join(self.tmp, "app"), 0o711 if self.root else 0o700)
        self.app_sock = os.path.join(self.tmp, "app", "app.sock")
        self.sink_sock = os.path.join(self.tmp, "app", "sink.sock")
        self.ws_sock = os.path.join(self.tmp, "app", "ws.sock")
        self.app_tcp = free_port()
        self.direct_port = free_port()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.root and hard < 65536:
            # D holds two descriptors per idle connection in a proxy (client and app side).
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
                soft = hard = 65536
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.nofile = hard
        self.app_proc = None
        # Copies of the binaries under names of their own, so that a `pkill jobgated` or
        # `pkill -f build/jobgate` run by someone else on the machine (a profiling session,
        # say) does not stop a contender in the middle of a run.
        os.makedirs(self.path("bin"), mode=0o755)
        for exe, alias in (("jobgated", "bench-gw"), ("jobgate", "bench-agent")):
            src = os.path.join(self.build, exe)
            if not os.access(src, os.X_OK):
                raise BenchError(f"{src} not built (make)")
            shutil.copy2(src, self.path("bin", alias))
        self.jobgated = self.path("bin", "bench-gw")
        self.jobgate = self.path("bin", "bench-agent")

    def logf(self, name):
        return os.path.join(self.tmp, "logs", name + ".log")

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def cleanup(self):
        self.procs.stop_all()
        out = self.args.out
        with contextlib.suppress(OSError):
            os.makedirs(os.path.join(out, "logs"), exist_ok=True)
            for name in os.listdir(self.path("logs")):
                src = self.path("logs", name)
                # jobgated logs every request: keep its other lines, and the end of each log.
                notes = []
                with open(src, "rb") as f:
                    for ln in f:
                        if b" info: req " not in ln and len(notes) < 1000:
                            notes.append(ln)
                    f.seek(max(0, os.path.getsize(src) - 20000))
                    data = f.read()
                with open(os.path.join(out, "logs", name), "wb") as f:
                    f.write(b"".join(notes) + b"\n--- the end of the log:\n" + data)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def make_certs(self):
        # Server: self-signed ECDSA P-256 for *.localhost; client (stunnel's mTLS): another.
        for name, cn, san in (("tls", "bench.localhost",
                               "subjectAltName=DNS:*.localhost,DNS:localhost,IP:127.0.0.1"),
                              ("client", "bench-client", "subjectAltName=DNS:bench-client")):
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                                f"/CN={cn}", "-addext", san, "-keyout", self.path(name + ".key"),
                                "-out", self.path(name + ".crt")], capture_output=True)
            if r.returncode:
                raise BenchError(f"openssl could not make a certificate: {r.stderr.decode()}")
        with open(self.path("tls.pem"), "w") as f:
            for n in ("tls.crt", "tls.key"):
                with open(self.path(n)) as g:
                    f.write(g.read())
        if self.root:
            for n in ("tls.crt", "tls.key", "tls.pem"):
                os.chmod(self.path(n), 0o600)

    def nginx_values(self, name):
        return {"PREFIX": self.tmp, "USER": "user root;" if self.root else "",
                "APP_SOCK": self.app_sock, "SINK_SOCK": self.sink_sock, "WS_SOCK": self.ws_sock,
                "NOFILE": self.nofile, "WORKER_CONNECTIONS": max(1024, self.nofile - 100),
                "NAME": name}

    def start_app(self):
        """The app: nginx (1 KiB body, the big file, /upload and /ws proxied to the two
        Python apps), sinkapp.py and wsapp.py, all on UNIX sockets in a private directory."""
        body = b"<!doctype html><title>jobgate bench</title><pre>\n"
        body += b"\n".join([b"x" * 62] * 20)
        body = body[:1018] + b"</pre>"
        assert len(body) == 1024
        self.body = body
        with open(self.path("www", "index.html"), "wb") as f:
            f.write(body)
        with open(self.path("www", "big.bin"), "wb") as f:  # sparse: no disk, no page cache
            f.truncate(self.args.big_bytes)
        with open(self.path("upload.bin"), "wb") as f:
            f.truncate(self.args.big_bytes)
        sink = self.procs.spawn([PY, os.path.join(HERE, "sinkapp.py"), "--unix", self.sink_sock],
                                self.logf("sinkapp"))
        ws = self.procs.spawn([PY, WSAPP, "--unix", self.ws_sock], self.logf("wsapp"))
        v = self.nginx_values("app")
        v.update(TCP_LISTEN=f"listen 127.0.0.1:{self.app_tcp};",
                 TLS_LISTEN=f"listen 127.0.0.1:{self.direct_port} ssl;")
        conf = render("nginx-app.conf.in", self.path("app.conf"), v)
        self.app_proc = self.procs.spawn([which("nginx"), "-p", self.tmp, "-c", conf, "-g",
                                          "daemon off;"], self.logf("app-nginx"))
        wait_until(lambda: unix_open(self.sink_sock), 10, "the upload sink (sinkapp.py)", sink,
                   self.logf("sinkapp"))
        wait_until(lambda: unix_open(self.ws_sock), 10, "the WebSocket app (wsapp.py)", ws,
                   self.logf("wsapp"))
        wait_until(lambda: unix_open(self.app_sock), 10, "the app (nginx)", self.app_proc,
                   self.path("app-error.log"))
        if self.root:
            for s in (self.app_sock, self.sink_sock, self.ws_sock):
                os.chmod(s, 0o666)
        r = subprocess.run(["curl", "-sf", "--unix-socket", self.app_sock, "http://app/"],
                           capture_output=True)
        if r.stdout != body:
            raise BenchError("the app does not serve its 1 KiB body")


# ------------------------------------------------------------------ contenders

class Contender:
    name = "?"
    group = "front"          # front: TLS proxies to the app; tunnel: another host's app
    tls = True
    reaped = True            # count exited children's CPU (processes that fork per connection)
    describe = ""

    count = 0

    def __init__(self, h):
        self.h = h
        Contender.count += 1
        self.tag = f"{self.name}-{Contender.count}"   # names this instance's files
        self.popens = []
        self.host = "bench.localhost"
        self.port = None
        self.cookie = None
        self.roots = []      # pids whose process trees are "the proxy"
        self.extra = {}

    def start(self):
        raise NotImplementedError

    def spawn(self, argv, logname, **kw):
        p = self.h.procs.spawn(argv, self.h.logf(logname), **kw)
        self.popens.append(p)
        return p

    def stop(self):
        for p in reversed(self.popens):
            self.h.procs.stop(p)
        self.popens = []

    def pids(self):
        return tree(self.roots)

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    def url(self, path="/"):
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def ws_url(self, path="/ws"):
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{path}"

    def headers(self):
        return [("Cookie", self.cookie)] if self.cookie else []

    def curl_args(self):
        a = ["curl", "-sS", "--resolve", f"{self.host}:{self.port}:127.0.0.1"]
        if self.tls:
            a.append("-k")
        for k, v in self.headers():
            a += ["-H", f"{k}: {v}"]
        return a

    def check(self):
        r = subprocess.run(self.curl_args() + ["-o", "-", "-w", "\n%{http_code}", self.url()],
                           capture_output=True, timeout=30)
        body, _, code = r.stdout.rpartition(b"\n")
        if code != b"200" or body != self.h.body:
            raise BenchError(f"{self.name}: GET {self.url()} gave {code.decode() or r.returncode}: "
                             f"{r.stderr.decode().strip()} {body[:200]!r}")


class Direct(Contender):
    name = "direct"
    describe = "TLS straight to the app's nginx (no proxy: the ceiling); CPU is the app's"

    def start(self):
        self.port = self.h.direct_port
        self.roots = [self.h.app_proc.pid]


class Nginx(Contender):
    name = "nginx"
    describe = "nginx, `worker_processes auto`, upstream keepalive 64 (nginx-proxy.conf.in)"

    def start(self):
        h = self.h
        self.port = free_port()
        v = h.nginx_values(self.tag)
        v["PORT"] = self.port
        conf = render("nginx-proxy.conf.in", h.path(self.tag + ".conf"), v)
        p = self.spawn([which("nginx"), "-p", h.tmp, "-c", conf, "-g", "daemon off;"], self.tag)
        self.roots = [p.pid]
        wait_until(lambda: tcp_open(self.port), 10, "nginx", p, h.path(self.tag + "-error.log"))


class Haproxy(Contender):
    name = "haproxy"
    describe = "HAProxy, HTTP mode, a thread per CPU, `http-reuse always` (haproxy.cfg.in)"

    def start(self):
        h = self.h
        self.port = free_port()
        conf = render("haproxy.cfg.in", h.path(self.tag + ".cfg"),
                      {"PREFIX": h.tmp, "NAME": self.tag, "PORT": self.port, "APP_SOCK": h.app_sock,
                       "MAXCONN": max(1000, (h.nofile - 200) // 2), "THREADS": os.cpu_count()})
        p = self.spawn([which("haproxy"), "-db", "-f", conf], self.tag)
        self.roots = [p.pid]
        wait_until(lambda: tcp_open(self.port), 10, "haproxy", p, h.logf(self.tag))


class Apache(Contender):
    name = "apache"
    idle = 0
    describe = "Apache httpd, event MPM, mod_proxy_http + mod_proxy_wstunnel (apache.conf.in)"

    def start(self):
        h = self.h
        self.port = free_port()
        run = h.path(self.tag + "-run")
        os.makedirs(run, exist_ok=True)
        # Idle keep-alive connections (D) wait without a thread: each child parks up to
        # ThreadsPerChild * (factor + 1). An open WebSocket holds a thread, so for D's count
        # of WebSockets (self.idle) the server may grow to that many threads.
        servers = max(4, -(-(self.idle + 256) // 64))
        want = max(256, h.args.idle + 500)
        factor = max(2, -(-want // (4 * 64)) - 1)
        user = ""
        if h.root:
            user = "User www-data\nGroup www-data"
            os.chmod(run, 0o755)
        conf = render("apache.conf.in", h.path(self.tag + ".conf"),
                      {"PREFIX": h.tmp, "NAME": self.tag, "PORT": self.port, "APP_SOCK": h.app_sock,
                       "APACHE_USER": user, "APACHE_SERVERS": servers,
                       "APACHE_WORKERS": servers * 64, "APACHE_FACTOR": factor})
        self.extra["threads"] = servers * 64
        p = self.spawn([which("apache2"), "-f", conf, "-DFOREGROUND"], self.tag)
        self.roots = [p.pid]
        wait_until(lambda: tcp_open(self.port), 15, "apache2", p, h.path(self.tag + "-error.log"))


class Chp(Contender):
    name = "chp"
    describe = ("configurable-http-proxy 4.6 (JupyterHub's; Node.js), TLS at the front, "
                "the app's loopback TCP port behind (it cannot dial UNIX sockets)")

    def start(self):
        h = self.h
        exe = os.path.join(HERE, "node_modules", ".bin", "configurable-http-proxy")
        if not os.access(exe, os.X_OK):
            raise BenchError("chp: bench/node_modules is missing (`make bench-deps` runs npm ci)")
        self.port = free_port()
        api = free_port()
        p = self.spawn([which("node"), exe, "--ip", "127.0.0.1", "--port", self.port,
                           "--api-ip", "127.0.0.1", "--api-port", api,
                           "--ssl-key", h.path("tls.key"), "--ssl-cert", h.path("tls.crt"),
                           "--default-target", f"http://127.0.0.1:{h.app_tcp}",
                        "--log-level", "warn"], self.tag,
                       env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN="bench-" + str(api)))
        self.roots = [p.pid]
        wait_until(lambda: tcp_open(self.port), 20, "configurable-http-proxy", p, h.logf(self.tag))


def control(path, reqs, timeout=60):
    """Sends JSON requests on one control connection; returns the answers, in order."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        f = s.makefile("rb")
        out = []
        batch = 500
        for i in range(0, len(reqs), batch):
            s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in reqs[i:i + batch]))
            for _ in reqs[i:i + batch]:
                line = f.readline()
                if not line:
                    raise BenchError("jobgated closed the control connection")
                out.append(json.loads(line))
        return out


class Jobgated:
    """A personal jobgated with its state in a directory of its own."""

    def __init__(self, h, name):
        self.h, self.name = h, name
        self.dir = h.path(name)
        for d in ("home", "state", "run"):
            os.makedirs(os.path.join(self.dir, d), mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JOBGATE_"))}
        self.env.update(HOME=os.path.join(self.dir, "home"),
                        XDG_STATE_HOME=os.path.join(self.dir, "state"),
                        XDG_RUNTIME_DIR=os.path.join(self.dir, "run"))
        self.ctl = os.path.join(self.dir, "run", "jobgate", "control.sock")
        self.cert = os.path.join(self.dir, "state", "jobgate", "tls.crt")
        self.port = free_port()
        self.proc = None

    def start(self):
        exe = self.h.jobgated
        t0 = time.monotonic()
        self.proc = self.h.procs.spawn([exe, "-f", "-l", f"127.0.0.1:{self.port}"],
                                       self.h.logf(self.name), env=self.env)
        wait_until(lambda: control(self.ctl, [{"op": "hello"}], 2)[0]["ok"] and tcp_open(self.port),
                   30, f"jobgated ({self.name})", self.proc, self.h.logf(self.name))
        return time.monotonic() - t0

    def stop(self):
        self.h.procs.stop(self.proc)

    def redeem(self, alias, link):
        host = f"{alias}.localhost"
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-D", "-", "--resolve",
                            f"{host}:{self.port}:127.0.0.1", link], capture_output=True, timeout=30)
        m = re.search(rb"(?im)^set-cookie:\s*(__Host-jobgate=[^;\r\n]*)", r.stdout)
        if not m:
            raise BenchError(f"redeeming {link} gave no {COOKIE} cookie: {r.stdout[:300]!r}")
        return m.group(1).decode()


class Jobgate(Contender):
    name = "jobgate"
    describe = ("a personal `jobgated -l 127.0.0.1:PORT`, the app registered on the control "
                "socket; every request carries the session cookie (full pipeline)")
    reaped = False

    def start(self):
        self.gw = Jobgated(self.h, self.tag)
        self.gw.start()
        self.popens.append(self.gw.proc)
        a = control(self.gw.ctl, [{"op": "register", "name": "bench", "socket": self.h.app_sock}])[0]
        if not a.get("ok"):
            raise BenchError(f"jobgate: register failed: {a}")
        self.host, self.port = f"{a['alias']}.localhost", self.gw.port
        self.cookie = self.gw.redeem(a["alias"], a["link"])
        self.roots = [self.gw.proc.pid]

    def pids(self):
        return [self.gw.proc.pid]


class JobgateTunnel(Contender):
    name = "jobgate-tunnel"
    group = "tunnel"
    reaped = False
    describe = ("a personal jobgated and `jobgate run -g https://127.0.0.1:PORT --ca CERT` "
                "wrapping its own copy of the app (the agent's tunnel: TLS + HTTP/2); CPU: "
                "jobgated + the agent")

    def start(self):
        h = self.h
        self.gw = Jobgated(h, self.tag)
        self.gw.start()
        self.popens.append(self.gw.proc)
        # The agent's app: the same nginx, on the socket that `jobgate run` chooses.
        app = f"{self.tag}-app"  # each instance its own (D starts a second beside the first)
        v = h.nginx_values(app)
        v.update(APP_SOCK="__SOCK__", TCP_LISTEN="", TLS_LISTEN="")
        tmpl = render("nginx-app.conf.in", h.path(f"{app}.conf.in"), v)
        wrapper = h.path(f"{app}.sh")
        with open(wrapper, "w") as f:
            f.write(f"""#!/bin/sh
sed "s|__SOCK__|$1|" {tmpl} > {h.tmp}/{app}.conf
exec {which('nginx')} -p {h.tmp} -c {h.tmp}/{app}.conf -g 'daemon off;'
""")
        os.chmod(wrapper, 0o700)
        # A tunnel of its own (not the node's shared one): the agent's CPU is this process's.
        argv = [h.jobgate, "run", "--json", "-n", "bench", "--own-tunnel",
                "-g", f"https://127.0.0.1:{self.gw.port}", "--ca", self.gw.cert,
                "--", "/bin/sh", wrapper, "{socket}"]
        out = h.path(f"{self.tag}-agent.out")
        with open(out, "wb") as o:
            self.agent = self.spawn(argv, f"{self.tag}-agent", env=self.gw.env, stdout=o)
        ready = {}

        def is_ready():
            with open(out) as f:
                for ln in f:
                    with contextlib.suppress(ValueError):
                        ev = json.loads(ln)
                        if ev.get("event") == "ready":
                            ready.update(ev)
                            return True
            return False
        wait_until(is_ready, 30, "jobgate run -g (the tunnel agent)", self.agent,
                   h.logf(f"{self.tag}-agent"))
        self.host, self.port = f"{ready['alias']}.localhost", self.gw.port
        self.cookie = self.gw.redeem(ready["alias"], ready["link"])
        time.sleep(0.5)
        self.extra["agent_idle_rss_kb"] = status_kb([self.agent.pid], "VmRSS")
        # RSS counts every page of the shared libraries the agent touched (libcrypto
        # alone is about 4 MiB of them), which every process on the node that uses
        # them shares: its own memory is the anonymous part; Pss splits the shared.
        self.extra["agent_idle_anon_kb"] = status_kb([self.agent.pid], "RssAnon")
        self.extra["agent_idle_pss_kb"] = rollup_kb(self.agent.pid, "Pss")

    def pids(self):
        return [self.gw.proc.pid, self.agent.pid]


class Ssh(Contender):
    name = "ssh"
    group = "tunnel"
    tls = False
    describe = ("`ssh -tt -L 127.0.0.1:PORT:APP_SOCKET HOST sleep` (a forward beside a login "
                "session, as users run it) through a throw-away sshd on 127.0.0.1 (aes128-gcm); "
                "the client speaks plain HTTP to ssh's port; CPU: ssh + sshd")

    def start(self):
        h = self.h
        d = h.path(self.tag)  # each instance its own (D starts a second beside the first)
        os.makedirs(d, mode=0o700)
        for key in ("host_ed25519", "id_ed25519"):
            subprocess.run([which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                            os.path.join(d, key)], check=True, capture_output=True)
        with open(os.path.join(d, "id_ed25519.pub")) as f, \
                open(os.path.join(d, "authorized_keys"), "w") as g:
            g.write(f.read())
        with open(os.path.join(d, "host_ed25519.pub")) as f, \
                open(os.path.join(d, "known_hosts"), "w") as g:
            g.write("benchhost " + " ".join(f.read().split()[:2]) + "\n")
        sport = free_port()
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
        conf = render("sshd_config.in", os.path.join(d, "sshd_config"),
                      {"PREFIX": h.tmp, "DIR": d, "PORT": sport, "USER": user})
        os.chmod(conf, 0o600)
        if h.root:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        r = subprocess.run([which("sshd"), "-t", "-f", conf], capture_output=True, text=True)
        if r.returncode:
            raise BenchError(f"sshd -t refused its configuration: {r.stderr}")
        sshd = h.procs.spawn([which("sshd"), "-D", "-e", "-f", conf], h.logf(f"{self.tag}-sshd"))
        wait_until(lambda: tcp_open(sport), 10, "sshd", sshd, h.logf(f"{self.tag}-sshd"))
        self.port = free_port()
        # The way a user forwards a port: with a login session (a terminal), which makes
        # both ends "interactive" (TCP_NODELAY); `ssh -N` leaves Nagle on, and keep-alive
        # requests then wait for delayed ACKs (about 300 req/s).
        cli = h.procs.spawn([which("ssh"), "-tt", "-F", "/dev/null", "-p", sport,
                             "-i", os.path.join(d, "id_ed25519"), "-o", "IdentitiesOnly=yes",
                             "-o", "BatchMode=yes", "-o", "HostKeyAlias=benchhost",
                             "-o", f"UserKnownHostsFile={d}/known_hosts",
                             "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes",
                             "-o", "Ciphers=aes128-gcm@openssh.com",
                             "-o", "KexAlgorithms=curve25519-sha256", "-o", "Compression=no",
                             "-L", f"127.0.0.1:{self.port}:{h.app_sock}",
                             f"{user}@127.0.0.1", "exec sleep 86400"], h.logf(self.tag))
        self.roots = [sshd.pid, cli.pid]
        wait_until(lambda: tcp_open(self.port), 15, "ssh -L", cli, h.logf(self.tag))


class Stunnel(Contender):
    name = "stunnel"
    group = "tunnel"
    tls = False
    describe = ("an stunnel mTLS chain: client stunnel (plain HTTP in) -> TLS 1.3 with client "
                "certificate -> server stunnel -> the app's socket; CPU: both stunnels")

    def start(self):
        h = self.h
        sp, cp = free_port(), free_port()
        t = self.tag  # each instance its own files (D starts a second beside the first)
        v = {"PREFIX": h.tmp, "NAME": t, "SERVER_PORT": sp, "CLIENT_PORT": cp,
             "APP_SOCK": h.app_sock}
        srv = h.procs.spawn([which("stunnel4"), render("stunnel-server.conf.in",
                                                        h.path(f"{t}-server.conf"), v)],
                            h.logf(f"{t}-server"))
        wait_until(lambda: tcp_open(sp), 10, "stunnel (server)", srv, h.path(f"{t}-server.log"))
        cli = h.procs.spawn([which("stunnel4"), render("stunnel-client.conf.in",
                                                        h.path(f"{t}-client.conf"), v)],
                            h.logf(f"{t}-client"))
        wait_until(lambda: tcp_open(cp), 10, "stunnel (client)", cli, h.path(f"{t}-client.log"))
        self.port = cp
        self.roots = [srv.pid, cli.pid]


CLASSES = {c.name: c for c in (Jobgate, Nginx, Haproxy, Apache, Chp, Direct, JobgateTunnel,
                               Ssh, Stunnel)}


# ------------------------------------------------------------------ measuring

class Measure:
    """CPU seconds of a contender's processes over a block."""

    def __init__(self, c):
        self.c = c

    def __enter__(self):
        self.pids = self.c.pids()
        self.cpu0 = cpu_seconds(self.pids, self.c.reaped)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *a):
        self.wall = time.monotonic() - self.t0
        self.cpu = max(0.0, cpu_seconds(self.pids + [p for p in self.c.pids()
                                                     if p not in self.pids], self.c.reaped)
                       - self.cpu0)


def to_us(v):
    m = re.match(r"^([0-9.]+)(us|ms|s|m|h)$", v)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7, "h": 3.6e9}[m.group(2)]


def parse_wrk(text):
    r = {"rps": None, "p50": None, "p99": None, "requests": 0, "non2xx": 0, "errors": 0}
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+(\S+)", text, re.M)
        if m:
            r[key] = to_us(m.group(1))
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors:(.*)", text)
    if m:
        r["errors"] = sum(int(x) for x in re.findall(r"\d+", m.group(1)))
    return r


def run_wrk(h, c, seconds, conns, close=False, tag="A"):
    args = [which("wrk"), f"-t{min(h.args.threads, conns)}", f"-c{conns}", f"-d{seconds}s",
            "--latency", "-s", os.path.join(HERE, "localhost.lua")]
    for k, v in c.headers():
        args += ["-H", f"{k}: {v}"]
    if close:
        args += ["-H", "Connection: close"]
    args.append(c.url())
    with Measure(c) as m:
        r = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    text = r.stdout + r.stderr
    w = parse_wrk(text)
    ok = w["requests"] - w["non2xx"]
    if w["rps"] is None or ok <= 0:
        raise BenchError(f"{c.name}: scenario {tag}: wrk got no successful response:\n{text}")
    if w["non2xx"] or (w["errors"] and not close):
        log(f"{c.name}: {tag}: warning: {w['non2xx']} non-2xx responses and {w['errors']} "
            f"socket errors in {w['requests']} requests")
    return {"rps": w["rps"] * ok / max(1, w["requests"]), "p50_ms": w["p50"] / 1000,
            "p99_ms": w["p99"] / 1000, "cpu_us_req": m.cpu * 1e6 / ok, "requests": ok}


def run_curl_big(h, c, upload):
    size = h.args.big_bytes
    path = "/upload" if upload else "/big"
    fmt = "%{http_code} %{size_upload} %{size_download} %{time_total}"
    args = c.curl_args() + ["-o", "/dev/null", "-w", fmt, "-H", "Expect:"]
    if upload:
        args += ["-T", h.path("upload.bin")]
    args.append(c.url(path))
    with Measure(c) as m:
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    parts = r.stdout.split()
    want = "204" if upload else "200"
    if r.returncode or len(parts) != 4 or parts[0] != want:
        raise BenchError(f"{c.name}: {'upload' if upload else 'download'} of {size} bytes "
                         f"failed (curl {r.returncode}): {r.stdout} {r.stderr.strip()}")
    moved = float(parts[1] if upload else parts[2])
    if moved != size:
        raise BenchError(f"{c.name}: moved {moved:.0f} of {size} bytes")
    secs = float(parts[3])
    return {"mb_s": size / secs / 1e6, "cpu_s_gib": m.cpu * GIB / size}


# -- WebSocket round trips (E) ------------------------------------------------------

def tls_client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def _ws_echo(c, sockets, seconds, size=64):
    import websockets
    ctx = tls_client_ctx() if c.tls else None
    conns = []
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", c.port), timeout=10)
        kw = dict(sock=sock, extra_headers=c.headers(), max_size=None, compression=None,
                  open_timeout=20, ping_interval=None)
        if ctx:
            kw.update(ssl=ctx, server_hostname=c.host)
        conns.append(await websockets.connect(c.ws_url(), **kw))
    rtts = []
    msg = b"m" * size
    stop = time.monotonic() + seconds

    async def loop(ws):
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await ws.send(msg)
            got = await ws.recv()
            rtts.append(time.perf_counter() - t0)
            if got != msg:
                raise BenchError(f"{c.name}: the WebSocket echo returned {len(got)} bytes")

    try:
        await asyncio.gather(*(loop(ws) for ws in conns))
    finally:
        for ws in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
    return rtts


def run_ws(h, c, sockets, seconds):
    with Measure(c) as m:
        try:
            rtts = asyncio.run(_ws_echo(c, sockets, seconds))
        except BenchError:
            raise
        except Exception as e:
            raise BenchError(f"{c.name}: WebSocket echo with {sockets} sockets failed: {e!r}")
    if not rtts:
        raise BenchError(f"{c.name}: no WebSocket echo came back")
    rtts.sort()
    q = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000  # noqa: E731
    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "msg_s": len(rtts) / m.wall,
            "cpu_us_msg": m.cpu * 1e6 / len(rtts)}


# -- idle connections (D) -------------------------------------------------------------

IDLE_OPENERS = 8   # threads opening D's connections: a TLS handshake waits on the proxy


def _open_idle(c, n, ws):
    """Opens n idle connections (or WebSockets) to c, each after one answered request, from
    IDLE_OPENERS threads (the handshakes release the GIL): ten thousand one after another
    took most of the suite's time."""
    ctx = tls_client_ctx() if c.tls else None
    cookie = "".join(f"{k}: {v}\r\n" for k, v in c.headers())
    host = f"{c.host}:{c.port}"
    if ws:
        req = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\n{cookie}Upgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    else:
        req = f"GET / HTTP/1.1\r\nHost: {host}\r\n{cookie}\r\n".encode()
    what = "WebSocket" if ws else "idle connection"
    socks = []
    lock = threading.Lock()
    errors = []
    left = [n]

    def one():
        s = socket.create_connection(("127.0.0.1", c.port), timeout=20)
        try:
            if ctx:
                s = ctx.wrap_socket(s, server_hostname=c.host)
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    raise BenchError(f"{c.name}: an {what} was closed before its answer")
                buf += d
            head, _, rest = buf.partition(b"\r\n\r\n")
            if head.split(b" ", 2)[1:2] != ([b"101"] if ws else [b"200"]):
                raise BenchError(f"{c.name}: {what}: {head[:200]!r}")
            while not ws and len(rest) < 1024:
                d = s.recv(65536)
                if not d:
                    raise BenchError(f"{c.name}: an {what} was closed in its answer")
                rest += d
        except BaseException:
            s.close()
            raise
        return s

    def opener():
        while True:
            with lock:
                if errors or not left[0]:
                    return
                left[0] -= 1
            try:
                s = one()
            except (OSError, BenchError) as e:
                with lock:
                    errors.append(e)
                return
            with lock:
                socks.append(s)

    threads = [threading.Thread(target=opener, daemon=True) for _ in range(min(IDLE_OPENERS, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        e = errors[0]
        raise BenchError(f"{c.name}: opening {what} {len(socks) + 1} of {n}: {e}") from e
    return socks


def run_idle(h, c, n, ws):
    pids = c.pids()
    time.sleep(0.3)
    before = status_kb(pids, "VmRSS")
    t0 = time.monotonic()
    try:
        socks = _open_idle(c, n, ws)
    except OSError as e:
        raise BenchError(f"{c.name}: opening {n} idle {'WebSockets' if ws else 'connections'}: {e}")
    log(f"{c.name}: {n} idle {'WebSockets' if ws else 'connections'} open in "
        f"{time.monotonic() - t0:.1f} s")
    try:
        time.sleep(1.0)
        after = status_kb(c.pids(), "VmRSS")
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
    time.sleep(0.5)
    return {"kib_conn": (after - before) / n, "rss_mib": after / 1024}


# ------------------------------------------------------------------ scenarios

def median_of(runs):
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def fail(h, label, name, err):
    """A contender failed a scenario: the run goes on without it there, and exits 1."""
    msg = str(err).strip().splitlines()
    log(f"{label}: {name} FAILED: {err}")
    h.failures.append((label, name, msg[0] if msg else repr(err)))


def rounds(h, contenders, fn, label, n=None):
    """Alternates contenders within each of n rounds (BENCH_ROUNDS); returns {name: median
    result}, or {name: "failed: ..."} for a contender that failed a run (it is not run again)."""
    runs = {c.name: [] for c in contenders}
    failed = {}
    for i in range(n or h.args.rounds):
        for c in contenders:
            if c.name in failed:
                continue
            try:
                r = fn(c)
            except BenchError as e:
                fail(h, label, c.name, e)
                failed[c.name] = str(e).strip().splitlines()[0]
                continue
            runs[c.name].append(r)
            log(f"{label} round {i + 1} {c.name}: " +
                ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)))
    return {n: (f"failed: {failed[n]}" if n in failed else median_of(v)) for n, v in runs.items()}


def scenario_A(h, cs, label="A"):
    a = h.args
    failed = {}
    if a.warmup:
        for c in cs:
            try:
                run_wrk(h, c, a.warmup, a.connections, tag=f"{label} warm-up")
            except BenchError as e:
                fail(h, label, c.name, e)
                failed[c.name] = "failed: " + str(e).strip().splitlines()[0]
    res = rounds(h, [c for c in cs if c.name not in failed],
                 lambda c: run_wrk(h, c, a.seconds, a.connections, tag=label), label)
    return {c.name: failed.get(c.name) or res[c.name] for c in cs}


def scenario_N(h, cs):
    a = h.args
    n = max(2, min(a.connections, 16))
    return rounds(h, cs, lambda c: run_wrk(h, c, a.seconds, n, close=True, tag="N"), "N")


def scenario_B(h, cs, label="B"):
    def one(c):
        d = run_curl_big(h, c, upload=False)
        u = run_curl_big(h, c, upload=True)
        return {"down_mb_s": d["mb_s"], "down_cpu_s_gib": d["cpu_s_gib"],
                "up_mb_s": u["mb_s"], "up_cpu_s_gib": u["cpu_s_gib"]}
    return rounds(h, cs, one, label)


def scenario_E(h, cs, label="E"):
    a = h.args

    def one(c):
        r1 = run_ws(h, c, 1, a.seconds)
        rn = run_ws(h, c, a.ws_sockets, a.seconds)
        return {"p50_ms_1": r1["p50_ms"], "p99_ms_1": r1["p99_ms"], "cpu_us_msg_1": r1["cpu_us_msg"],
                "p50_ms_n": rn["p50_ms"], "p99_ms_n": rn["p99_ms"], "cpu_us_msg_n": rn["cpu_us_msg"],
                "msg_s_n": rn["msg_s"]}
    return rounds(h, cs, one, label)


def scenario_D(h, cs, label="D"):
    # An idle connection may hold two descriptors in a proxy (client and app side; always for
    # a WebSocket), and the app's nginx holds both ends of a WebSocket's path to wsapp
    # besides the other contenders' kept-alive connections (with 9,500 of 20,000 it ran out).
    n = n_ws = min(h.args.idle, max(10, (h.nofile - 2000) // 2))
    if n < h.args.idle:
        log(f"{label}: {n} idle connections instead of {h.args.idle}: the file-descriptor "
            f"limit is {h.nofile}")
    h.results_meta[f"{label}_n"] = (n, n_ws)

    def fresh(c, fn):
        """Memory that a process freed is seldom given back to the system, so each count
        starts from a new instance of the contender (but `direct`: the app itself)."""
        if isinstance(c, Direct):
            return fn(c)
        c2 = type(c)(h)
        c2.idle = n_ws
        try:
            c2.start()
            c2.check()
            return fn(c2)
        finally:
            c2.stop()

    def one(c):
        k = fresh(c, lambda x: run_idle(h, x, n, ws=False))
        w = fresh(c, lambda x: run_idle(h, x, n_ws, ws=True))
        return {"kib_keepalive": k["kib_conn"], "kib_ws": w["kib_conn"],
                "rss_mib": w["rss_mib"]}
    return rounds(h, cs, one, label, h.args.idle_rounds)


# -- where the CPU goes (P) ----------------------------------------------------------

# What P profiles: the runs behind the targets (A, B, T/A, T/B), jobgate beside the peer
# its target names.
PROFILE_RUNS = [
    ("A", "A", ("jobgate", "haproxy")),
    ("N", "N", ("jobgate", "haproxy")),
    ("B down", "B-down", ("jobgate", "haproxy")),
    ("B up", "B-up", ("jobgate", "haproxy")),
    ("T/A", "A", ("jobgate-tunnel", "ssh")),
    ("T/B down", "B-down", ("jobgate-tunnel", "ssh")),
    ("T/B up", "B-up", ("jobgate-tunnel", "ssh")),
]
CATEGORIES = ["kernel", "OpenSSL", "libevent", "nghttp2", "libc", "program", "other"]


def dso_category(dso, comm):
    d = dso.strip("[]")
    if d.startswith("kernel"):
        return "kernel"
    for prefix, cat in (("libcrypto", "OpenSSL"), ("libssl", "OpenSSL"), ("libevent", "libevent"),
                        ("libnghttp2", "nghttp2"), ("libc.so", "libc"), ("libc-", "libc"),
                        ("ld-linux", "libc")):
        if d.startswith(prefix):
            return cat
    return "program" if d == comm else "other"


def perf_report(data, *sort):
    """[(percent, fields...)] from `perf report --sort ...` of a recording."""
    r = subprocess.run([which("perf"), "report", "-i", data, "--stdio", "-q", "-g", "none",
                        "--percent-limit", "0.3", "--sort", ",".join(sort)],
                       capture_output=True, text=True, timeout=300)
    rows = []
    for line in r.stdout.splitlines():
        f = line.split(None, len(sort))
        if len(f) == len(sort) + 1 and f[0].endswith("%"):
            rows.append((float(f[0][:-1]),) + tuple(x.strip() for x in f[1:]))
    return rows


def profile_one(h, c, kind, data):
    """Runs kind (A, N, B-down, B-up) against c under `perf record` of its processes; returns
    the run's CPU figure and its split by process and library."""
    perf = h.procs.spawn([which("perf"), "record", "-q", "-F", "499", "-o", data,
                          "-p", ",".join(str(p) for p in c.pids())], h.logf("perf"),
                         stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        if perf.poll() is not None:
            raise BenchError(f"perf record exited with {perf.returncode} "
                             f"(see {h.logf('perf')})")
        if kind in ("A", "N"):
            r = run_wrk(h, c, h.args.seconds, h.args.connections if kind == "A"
                        else max(2, min(h.args.connections, 16)), close=kind == "N", tag="P")
            fig, unit = r["cpu_us_req"], "µs/req"
        else:
            r = run_curl_big(h, c, upload=kind == "B-up")
            fig, unit = r["cpu_s_gib"], "s/GiB"
    finally:
        h.procs.stop(perf, timeout=30)
    split = {}
    for pct, comm, dso in perf_report(data, "comm", "dso"):
        per = split.setdefault(comm, dict.fromkeys(CATEGORIES, 0.0))
        per[dso_category(dso, comm)] += pct
    syms = [(pct, comm, dso, sym) for pct, comm, dso, sym in
            perf_report(data, "comm", "dso", "sym")[:12]]
    return {"cpu": fig, "unit": unit, "split": split, "symbols": syms}


def scenario_P(h, cs):
    """Where the CPU goes in the runs behind the targets (perf from Debian's linux-perf)."""
    if not shutil.which("perf"):
        return {"skipped": "perf is not installed (Debian's linux-perf)"}
    by_name = {c.name: c for c in cs}
    out = {}
    for label, kind, names in PROFILE_RUNS:
        for name in names:
            if name not in by_name:
                continue
            data = h.path("tmp", f"perf-{len(out)}.data")
            try:
                out[f"{label}|{name}"] = profile_one(h, by_name[name], kind, data)
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                log(f"P: {label} {name}: no profile: {e}")
                out[f"{label}|{name}"] = {"failed": str(e).splitlines()[0]}
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(data)
    return out


def profile_section(res):
    if "skipped" in res:
        return ["", "## P — where the CPU goes", "", f"Not profiled: {res['skipped']}."]
    out = ["", "## P — where the CPU goes", "",
           "One more run of each scenario behind a target under `perf record -F 499` of the "
           "contender's processes; its CPU figure (perf's own cost included, so a little above "
           "the tables') split by process and by where the samples fell: the kernel "
           "(system calls, TCP, epoll, copies), OpenSSL (libcrypto, libssl), libevent, "
           "nghttp2, libc (memcpy, malloc), the program's own code, other libraries.", "",
           "| run | contender | process | CPU | " + " | ".join(CATEGORIES) + " |",
           "|---|---|---|---:|" + "---:|" * len(CATEGORIES)]
    for key, r in res.items():
        label, name = key.split("|")
        if "failed" in r:
            out.append(f"| {label} | {name} | failed: {r['failed']} |" + " |" * (len(CATEGORIES) + 1))
            continue
        total = sum(sum(v.values()) for v in r["split"].values()) or 1.0
        for comm, per in sorted(r["split"].items(), key=lambda kv: -sum(kv[1].values())):
            share = sum(per.values()) / total
            if share < 0.02:
                continue
            fig = r["cpu"] * share
            out.append(f"| {label} | {name} | {comm} | {fig:.2f} {r['unit']} | " +
                       " | ".join(f"{fig * per[k] / max(sum(per.values()), 1e-9):.2f}"
                                  for k in CATEGORIES) + " |")
    out += ["", "The hottest symbols of each run (share of its samples):", ""]
    for key, r in res.items():
        if "failed" in r or not r["symbols"]:
            continue
        label, name = key.split("|")
        out.append(f"- {label}, {name}: " + "; ".join(
            f"{sym.replace('[.] ', '').replace('[k] ', '')} ({comm}, {dso.strip('[]')}) {pct:.1f}%"
            for pct, comm, dso, sym in r["symbols"][:8]))
    return out


def scenario_R(h):
    """100,000 routes in one jobgated: registration, start-up with them, lookup cost."""
    n = h.args.routes
    gw = Jobgated(h, "jobgated-routes")
    t_empty = gw.start()
    a = control(gw.ctl, [{"op": "register", "name": "first", "socket": h.app_sock}])[0]
    if not a.get("ok"):
        raise BenchError(f"R: register failed: {a}")
    c = Contender(h)
    c.name, c.host, c.port, c.reaped = "jobgate (R)", f"{a['alias']}.localhost", gw.port, False
    c.cookie = gw.redeem(a["alias"], a["link"])
    c.pids = lambda: [gw.proc.pid]
    secs = h.args.seconds
    base = run_wrk(h, c, secs, h.args.connections, tag="R (1 route)")
    rss0 = status_kb([gw.proc.pid], "VmRSS")
    reqs = [{"op": "register", "name": f"r{i}", "socket": h.app_sock} for i in range(n - 1)]
    with Measure(c) as m:
        ans = control(gw.ctl, reqs, timeout=300)
    bad = [x for x in ans if not x.get("ok")]
    if bad:
        raise BenchError(f"R: {len(bad)} of {n - 1} registrations failed, e.g. {bad[0]}")
    reg_wall_us, reg_cpu_us = m.wall * 1e6 / (n - 1), m.cpu * 1e6 / (n - 1)
    rss1 = status_kb([gw.proc.pid], "VmRSS")
    full = run_wrk(h, c, secs, h.args.connections, tag=f"R ({n} routes)")
    gw.stop()
    t0 = time.monotonic()
    gw.proc = h.procs.spawn([h.jobgated, "-f", "-l",
                             f"127.0.0.1:{gw.port}"], h.logf(gw.name), env=gw.env)
    wait_until(lambda: control(gw.ctl, [{"op": "hello"}], 2)[0]["ok"], 120,
               "jobgated (restart with the routes)", gw.proc, h.logf(gw.name))
    t_full = time.monotonic() - t0
    routes = control(gw.ctl, [{"op": "list"}], 120)[0].get("routes", [])
    gw.stop()
    return {"routes": n, "start_empty_s": t_empty, "restart_s": t_full,
            "routes_after_restart": len(routes),
            "register_us": reg_wall_us, "register_cpu_us": reg_cpu_us,
            "rss_1_mib": rss0 / 1024, "rss_n_mib": rss1 / 1024,
            "cpu_us_req_1": base["cpu_us_req"], "cpu_us_req_n": full["cpu_us_req"],
            "rps_1": base["rps"], "rps_n": full["rps"]}


def scenario_C(h):
    r = subprocess.run(["openssl", "speed", "-evp", "aes-128-gcm", "-seconds", "1", "-bytes",
                        "16384"], capture_output=True, text=True, timeout=120)
    m = re.search(r"^AES-128-GCM\s.*?([0-9.]+)k\s*$", r.stdout, re.M | re.I)
    aes = float(m.group(1)) * 1000 / 1e6 if m else None
    # A plain loopback TCP copy, 1 MiB writes, for about a second (or big_bytes).
    size = min(h.args.big_bytes * 2, 4 * GIB)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = [0]

    def sink():
        conn, _ = srv.accept()
        buf = bytearray(1 << 20)
        while True:
            k = conn.recv_into(buf)
            if not k:
                break
            got[0] += k
        conn.close()
    t = threading.Thread(target=sink)
    t.start()
    s = socket.create_connection(srv.getsockname())
    chunk = b"\0" * (1 << 20)
    t0 = time.monotonic()
    sent = 0
    while sent < size:
        s.sendall(chunk)
        sent += len(chunk)
    s.close()
    t.join()
    wall = time.monotonic() - t0
    srv.close()
    return {"aes_mb_s": aes, "loopback_mb_s": got[0] / wall / 1e6, "cpus": os.cpu_count()}


# ------------------------------------------------------------------ report

METRICS = {
    # key: (title, format, better) -- better: "low" or "high"
    "cpu_us_req": ("CPU µs/req", "{:.1f}", "low"),
    "rps": ("req/s", "{:.0f}", "high"),
    "p50_ms": ("p50 ms", "{:.2f}", "low"),
    "p99_ms": ("p99 ms", "{:.2f}", "low"),
    "down_cpu_s_gib": ("down CPU s/GiB", "{:.2f}", "low"),
    "up_cpu_s_gib": ("up CPU s/GiB", "{:.2f}", "low"),
    "down_mb_s": ("down MB/s", "{:.0f}", "high"),
    "up_mb_s": ("up MB/s", "{:.0f}", "high"),
    "cpu_us_msg_1": ("CPU µs/msg (1)", "{:.1f}", "low"),
    "cpu_us_msg_n": ("CPU µs/msg (n)", "{:.1f}", "low"),
    "p50_ms_1": ("p50 ms (1)", "{:.2f}", "low"),
    "p99_ms_1": ("p99 ms (1)", "{:.2f}", "low"),
    "p50_ms_n": ("p50 ms (n)", "{:.2f}", "low"),
    "p99_ms_n": ("p99 ms (n)", "{:.2f}", "low"),
    "msg_s_n": ("msg/s (n)", "{:.0f}", "high"),
    "kib_keepalive": ("KiB per idle keep-alive", "{:.1f}", "low"),
    "kib_ws": ("KiB per idle WebSocket", "{:.1f}", "low"),
    "rss_mib": ("RSS MiB (all open)", "{:.1f}", "low"),
}


def table(res, ref, keys):
    """Markdown table: a row per contender, then ref ÷ each peer."""
    names = list(res)
    lines = ["| contender | " + " | ".join(METRICS[k][0] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for n in names:
        if isinstance(res[n], str):
            lines.append(f"| {n} | {res[n].replace('|', '/')[:150]} |" + " |" * (len(keys) - 1))
            continue
        lines.append(f"| {n} | " + " | ".join(METRICS[k][1].format(res[n][k]) for k in keys) + " |")
    if ref in res and not isinstance(res[ref], str):
        for n in names:
            if n == ref or isinstance(res[n], str):
                continue
            cells = []
            for k in keys:
                b = res[n][k]
                cells.append(f"{res[ref][k] / b:.2f}" if b else "–")
            lines.append(f"| *{ref} ÷ {n}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCENARIO_KEYS = {
    "A": ["cpu_us_req", "rps", "p50_ms", "p99_ms"],
    "N": ["cpu_us_req", "rps", "p50_ms", "p99_ms"],
    "B": ["down_cpu_s_gib", "up_cpu_s_gib", "down_mb_s", "up_mb_s"],
    "E": ["cpu_us_msg_1", "p50_ms_1", "p99_ms_1", "cpu_us_msg_n", "p50_ms_n", "p99_ms_n",
          "msg_s_n"],
    "D": ["kib_keepalive", "kib_ws", "rss_mib"],
}
TITLES = {
    "A": "A — 1 KiB responses over keep-alive",
    "N": "N — a new TLS connection per request (`Connection: close`)",
    "B": "B — one big download and one big upload (curl)",
    "E": "E — WebSocket echo round trips, 64-byte messages",
    "D": "D — memory per idle connection",
    "T-A": "T/A — through the tunnel: 1 KiB responses over keep-alive",
    "T-B": "T/B — through the tunnel: big download and upload",
    "T-E": "T/E — through the tunnel: WebSocket echo round trips",
    "T-D": "T/D — through the tunnel: memory per idle connection (gateway and agent, or both "
           "ends of the peer)",
}


# -- the targets ------------------------------------------------------------------------

# (what, scenario, figure, jobgate's contender, peer, "ge"/"le", bound, profile run)
RATIO_TARGETS = [
    ("A: req/s ≥ 1.0× HAProxy", "A", "rps", "jobgate", "haproxy", "ge", 1.0, "A"),
    ("A: req/s ≥ 1.3× nginx", "A", "rps", "jobgate", "nginx", "ge", 1.3, "A"),
    ("A: p99 ≤ HAProxy's", "A", "p99_ms", "jobgate", "haproxy", "le", 1.0, "A"),
    ("A: CPU per request ≤ 0.9× HAProxy's", "A", "cpu_us_req", "jobgate", "haproxy", "le", 0.9,
     "A"),
    ("N: req/s ≥ 1.0× HAProxy", "N", "rps", "jobgate", "haproxy", "ge", 1.0, "N"),
    ("B: download MB/s ≥ 1.0× HAProxy", "B", "down_mb_s", "jobgate", "haproxy", "ge", 1.0,
     "B down"),
    ("B: upload MB/s ≥ 1.0× HAProxy", "B", "up_mb_s", "jobgate", "haproxy", "ge", 1.0, "B up"),
    ("B: download CPU per GiB ≤ HAProxy's", "B", "down_cpu_s_gib", "jobgate", "haproxy", "le",
     1.0, "B down"),
    ("B: upload CPU per GiB ≤ HAProxy's", "B", "up_cpu_s_gib", "jobgate", "haproxy", "le", 1.0,
     "B up"),
    ("T: req/s ≥ 1.0× ssh", "T-A", "rps", "jobgate-tunnel", "ssh", "ge", 1.0, "T/A"),
    ("T: CPU per request ≤ ssh's", "T-A", "cpu_us_req", "jobgate-tunnel", "ssh", "le", 1.0,
     "T/A"),
    ("T: download MB/s ≥ 1.0× ssh", "T-B", "down_mb_s", "jobgate-tunnel", "ssh", "ge", 1.0,
     "T/B down"),
    ("T: upload MB/s ≥ 1.0× ssh", "T-B", "up_mb_s", "jobgate-tunnel", "ssh", "ge", 1.0,
     "T/B up"),
    ("T: download CPU per GiB ≤ ssh's", "T-B", "down_cpu_s_gib", "jobgate-tunnel", "ssh", "le",
     1.0, "T/B down"),
    ("T: upload CPU per GiB ≤ ssh's", "T-B", "up_cpu_s_gib", "jobgate-tunnel", "ssh", "le", 1.0,
     "T/B up"),
    ("T: req/s ≥ 2× the stunnel chain", "T-A", "rps", "jobgate-tunnel", "stunnel", "ge", 2.0,
     "T/A"),
    ("T: download MB/s ≥ 2× the stunnel chain", "T-B", "down_mb_s", "jobgate-tunnel", "stunnel",
     "ge", 2.0, "T/B down"),
    ("T: upload MB/s ≥ 2× the stunnel chain", "T-B", "up_mb_s", "jobgate-tunnel", "stunnel", "ge",
     2.0, "T/B up"),
]


def _fig(results, key, name, metric):
    r = results.get(key, {}).get(name)
    return r.get(metric) if isinstance(r, dict) else None


def targets(h, results):
    """[(target, measured, met, profile run)] for every target the run has figures for."""
    rows = []
    for what, key, metric, ours, peer, op, bound, prof in RATIO_TARGETS:
        a, b = _fig(results, key, ours, metric), _fig(results, key, peer, metric)
        if a is None or not b:
            continue
        v = a / b
        val = f"{v:.2f}×"
        front = _fig(results, key[2:], "jobgate", metric) if key.startswith("T-") else None
        if front is not None and metric.startswith(("cpu", "down_cpu", "up_cpu")) and a > front:
            # jobgate-tunnel also terminates the browser's HTTPS, which ssh and stunnel leave
            # to nobody: what the tunnel itself costs is the rest.
            val += f" (the tunnel alone, less jobgate's cost at the front: {(a - front) / b:.2f}×)"
        rows.append((what, val, v >= bound if op == "ge" else v <= bound, prof))
    for n, label in (("1", "1 socket"), ("n", f"{h.args.ws_sockets} sockets")):
        m = f"p50_ms_{n}"
        jg, hp, d = (_fig(results, "E", x, m) for x in ("jobgate", "haproxy", "direct"))
        if None not in (jg, hp, d):
            rows.append((f"E: added round trip over direct TLS ≤ HAProxy's ({label})",
                         f"{(jg - d) * 1000:+.0f} µs (HAProxy {(hp - d) * 1000:+.0f} µs)",
                         jg - d <= max(hp - d, 0.0), None))
    for key, where in (("D", "at the front"), ("T-D", "through the tunnel")):
        ours = "jobgate-tunnel" if key == "T-D" else "jobgate"
        r = results.get(key, {}).get(ours)
        if isinstance(r, str):
            rows.append((f"D: idle connections held {where}", r[:120], False, None))
        if not isinstance(r, dict):
            continue
        if key == "D":
            for m, label in (("kib_keepalive", "idle keep-alive"), ("kib_ws", "idle WebSocket")):
                rows.append((f"D: ≤ 8 KiB of gateway memory per {label}", f"{r[m]:.1f} KiB",
                             r[m] <= 8.0, None))
        n = h.results_meta.get(f"{key}_n", (0, 0))[1]
        why = ""
        if n < min(h.args.idle, 10000):
            why = f" (the descriptor limit, {h.nofile:,}, allows no more)"
        elif n < 10000:
            why = f" (BENCH_IDLE={h.args.idle})"
        rows.append((f"D: 10,000 idle WebSockets held {where}, none refused or timed out",
                     f"{n:,} held{why}", n >= 10000, None))
    m = h.results_meta
    if "agent_idle_rss_kb" in m:
        rss = m["agent_idle_rss_kb"] / 1024
        rows.append(("T: an idle agent ≤ 4 MiB RSS",
                     f"{rss:.1f} MiB (its own memory {m.get('agent_idle_anon_kb', 0) / 1024:.1f}, "
                     f"PSS {m.get('agent_idle_pss_kb', 0) / 1024:.1f})", rss <= 4.0, None))
    r = results.get("R")
    if r:
        rows.append((f"R: start-up with {r['routes']:,} routes < 1 s", f"{r['restart_s']:.2f} s",
                     r["restart_s"] < 1.0, None))
        rows.append(("R: registration < 1 ms", f"{r['register_us']:.0f} µs",
                     r["register_us"] < 1000, None))
    return rows


def targets_section(h, results):
    rows = targets(h, results)
    if not rows:
        return []
    met = sum(1 for r in rows if r[2])
    out = ["", "## Targets", "",
           f"{met} of {len(rows)} met. Ratios are jobgate ÷ peer; a missed target names the "
           "profile run (section P) that shows where its CPU goes.", "",
           "| target | measured | met | profile |", "|---|---:|:---:|---|"]
    for what, val, ok, prof in rows:
        out.append(f"| {what} | {val} | {'yes' if ok else '**no**'} | "
                   f"{prof if prof and not ok and 'P' in results else ''} |")
    return out


def human_bytes(n):
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / (1 << 20):g} MiB"


def report(h, results, contenders, started, load_before):
    a = h.args
    uname = os.uname()
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        cpu = m.group(1) if m else ""
    out = [f"# jobgate benchmark, {started:%Y-%m-%d %H:%M} UTC" + (" (smoke)" if a.smoke else ""),
           "",
           f"Machine: {os.cpu_count()} CPUs, {cpu}, {uname.sysname} {uname.release}. "
           f"Load average before: {load_before}, after: {loadavg()}. "
           f"Rounds: {a.rounds} (contenders alternate within each round; D and T/D: "
           f"{a.idle_rounds}), medians; "
           f"{a.seconds} s per timed run, wrk -t{a.threads} -c{a.connections}; "
           f"B: {human_bytes(a.big_bytes)}; E: 1 and {a.ws_sockets} sockets; D: "
           + (f"{h.results_meta['D_n'][0]} keep-alive connections, {h.results_meta['D_n'][1]} "
              "WebSockets" if "D_n" in h.results_meta else "-")
           + (f"; T/D: {h.results_meta['T-D_n'][0]} of each" if "T-D_n" in h.results_meta
              else "") + ".",
           "",
           "CPU figures (the proxy's own processes, from /proc/PID/stat) lead: they hold on a "
           "busy machine; rates and latencies are shared with the load generator and the app "
           "on the same CPUs. Ratios are jobgate ÷ peer (jobgate-tunnel ÷ peer on the tunnel "
           "paths): below 1 is better for CPU, memory and latency, above 1 for rates.",
           "", "## Contenders", ""]
    for c in contenders:
        out.append(f"- **{c.name}**: {c.describe}")
    out += targets_section(h, results)
    if "C" in results:
        r = results["C"]
        out += ["", "## C — the machine", "",
                f"- `openssl speed -evp aes-128-gcm` (16 KiB blocks, one core): "
                + (f"{r['aes_mb_s']:.0f} MB/s" if r["aes_mb_s"] else "n/a"),
                f"- a plain loopback TCP copy (one Python sender and receiver): "
                f"{r['loopback_mb_s']:.0f} MB/s"]
    for key in ("A", "N", "B", "E", "D", "T-A", "T-B", "T-E", "T-D"):
        if key not in results:
            continue
        base = key.split("-")[-1]
        ref = "jobgate-tunnel" if key.startswith("T") else "jobgate"
        out += ["", f"## {TITLES[key]}", "", table(results[key], ref, SCENARIO_KEYS[base])]
    if "R" in results:
        r = results["R"]
        out += ["", f"## R — {r['routes']:,} registered routes (jobgate only)", "",
                "| figure | value |", "|---|---:|",
                f"| start-up, empty state (until the control socket answers) | {r['start_empty_s']:.2f} s |",
                f"| restart with the routes in the store | {r['restart_s']:.2f} s ({r['routes_after_restart']:,} routes listed after it) |",
                f"| registration, wall per route (pipelined on one control connection) | {r['register_us']:.0f} µs |",
                f"| registration, jobgated CPU per route | {r['register_cpu_us']:.0f} µs |",
                f"| RSS with 1 route → with all | {r['rss_1_mib']:.1f} → {r['rss_n_mib']:.1f} MiB |",
                f"| scenario A CPU per request, 1 route → all (lookup cost) | {r['cpu_us_req_1']:.1f} → {r['cpu_us_req_n']:.1f} µs |",
                f"| scenario A req/s, 1 route → all | {r['rps_1']:.0f} → {r['rps_n']:.0f} |"]
        if "agent_idle_rss_kb" in h.results_meta:
            m = h.results_meta
            out.append(f"| an idle agent (`jobgate run -g`, after start): RSS; its own (anonymous) "
                       f"memory; PSS (shared library pages split among their users) | "
                       f"{m['agent_idle_rss_kb'] / 1024:.1f}; "
                       f"{m.get('agent_idle_anon_kb', 0) / 1024:.1f}; "
                       f"{m.get('agent_idle_pss_kb', 0) / 1024:.1f} MiB |")
    if "I" in results:
        out += idle.report(results["I"])
    if "P" in results:
        out += profile_section(results["P"])
    if h.failures:
        out += ["", "## Failures", ""] + [f"- {label}: **{name}**: {msg}"
                                          for label, name, msg in h.failures]
    if h.results_meta.get("charts"):
        out += ["", "## Charts", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                         for p in h.results_meta["charts"]]
    return "\n".join(out) + "\n"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def charts(h, results, outdir, stem):
    """PNG bar charts of the leading CPU figure per scenario, when matplotlib is there."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("charts: python3-matplotlib not installed, skipped")
        return []
    files = []
    for key, res in results.items():
        if key not in TITLES:
            continue
        metric = SCENARIO_KEYS[key.split("-")[-1]][0]
        names = [n for n in res if not isinstance(res[n], str)]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(names, [res[n][metric] for n in names],
               color=["#c0392b" if n.startswith("jobgate") else "#7f8c8d" for n in names])
        ax.set_title(f"{TITLES[key]}: {METRICS[metric][0]} (lower is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        p = os.path.join(outdir, f"{stem}-{key}.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        files.append(p)
    return files


def update_readme(results_md, rel):
    path = os.path.join(HERE, "README.md")
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- latest:begin -->", "<!-- latest:end -->"
    hist = "<!-- history:next -->"
    if begin not in text or end not in text or hist not in text:
        log("README.md has no latest/history markers; not updated")
        return
    body = results_md.split("\n", 1)[1].replace("(" + os.path.basename(rel).rsplit(".", 1)[0],
                                               "(results/" + os.path.basename(rel).rsplit(".", 1)[0])
    # The contenders are described above in README.md; the charts stay in results/.
    body = re.sub(r"\n## (Contenders|Charts)\n.*?(?=\n## |\Z)", "\n", body, flags=re.S)
    body = re.sub(r"^## ", "### ", body, flags=re.M)
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    title = results_md.split("\n", 1)[0].lstrip("# ")
    text = f"{pre}{begin}\n{title} ([{rel}]({rel})):\n{body}{end}{post}"
    text = text.replace(hist, f"{hist}\n- [{rel}]({rel}): {title}", 1)
    with open(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------------ main

def env_int(name, default):
    v = os.environ.get(name, "")
    if v == "":
        return default
    if not v.isdigit():
        raise BenchError(f"{name} must be a whole number (got {v!r})")
    return int(v)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--smoke", action="store_true", default=os.environ.get("BENCH_SMOKE") == "1",
                    help="every scenario for a second, tiny sizes (make bench-smoke)")
    ap.add_argument("--contenders", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma-separated: " + ",".join(ALL_CONTENDERS) + " (default: all)")
    ap.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", ""),
                    help="comma-separated: " + ",".join(ALL_SCENARIOS) + " (default: all)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", ""))
    ap.add_argument("--no-results", action="store_true",
                    help="do not write bench/results/DATE.md nor update README.md")
    a = ap.parse_args(argv)
    s = a.smoke
    a.seconds = env_int("BENCH_SECONDS", 1 if s else 5)
    a.rounds = env_int("BENCH_ROUNDS", 1 if s else 3)
    a.warmup = env_int("BENCH_WARMUP", 0 if s else 2)
    a.connections = env_int("BENCH_CONNECTIONS", 4 if s else 64)
    a.threads = env_int("BENCH_THREADS", 2)
    a.big_bytes = env_int("BENCH_BIG_MIB", 8 if s else 1024) << 20
    a.ws_sockets = env_int("BENCH_WS_SOCKETS", 4 if s else 100)
    a.idle = env_int("BENCH_IDLE", 20 if s else 10000)
    # Memory per idle connection repeats to 0.1 % between rounds (18.19, 18.20, 18.20 KiB in
    # results/2026-12-04-3.md) and D is the longest scenario: one round unless asked.
    a.idle_rounds = env_int("BENCH_IDLE_ROUNDS", 1)
    a.routes = env_int("BENCH_ROUTES", 200 if s else 100000)
    a.idle_apps = env_int("BENCH_IDLE_APPS", 20 if s else 1000)
    a.poll_seconds = env_int("BENCH_POLL", 5)
    a.poll_samples = env_int("BENCH_POLL_SAMPLES", 1 if s else 10)
    if a.seconds < 1 or a.rounds < 1 or a.idle_rounds < 1 or a.connections < 1 or a.big_bytes < 1 or a.idle < 1 \
            or a.routes < 2 or a.ws_sockets < 1 or a.idle_apps < 1 or a.poll_seconds < 5 \
            or a.poll_samples < 1:
        raise BenchError("BENCH_SECONDS, _ROUNDS, _IDLE_ROUNDS, _CONNECTIONS, _BIG_MIB, _IDLE, "
                         "_WS_SOCKETS, _IDLE_APPS, _POLL_SAMPLES must be at least 1, BENCH_ROUTES "
                         "at least 2, BENCH_POLL at least 5 (the gateway's poll_min)")
    a.build = os.path.abspath(a.build)
    if not a.out:
        a.out = os.path.join(a.build, "bench-smoke" if s else "bench")
    a.contenders = [x for x in re.split(r"[,\s]+", a.contenders) if x] or ALL_CONTENDERS
    a.scenarios = [x.upper() for x in re.split(r"[,\s]+", a.scenarios) if x] or ALL_SCENARIOS
    for x in a.contenders:
        if x not in CLASSES:
            raise BenchError(f"unknown contender {x!r} (known: {', '.join(ALL_CONTENDERS)})")
    for x in a.scenarios:
        if x not in ALL_SCENARIOS:
            raise BenchError(f"unknown scenario {x!r} (known: {', '.join(ALL_SCENARIOS)})")
    return a


def main(argv):
    a = parse_args(argv)
    for tool in ("wrk", "nginx", "curl", "openssl"):
        which(tool)
    if "E" in a.scenarios or "T" in a.scenarios:
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise BenchError("python3-websockets is missing (`scripts/install-deps bench`)")
    os.makedirs(a.out, exist_ok=True)
    shutil.rmtree(os.path.join(a.out, "logs"), ignore_errors=True)
    h = Harness(a)
    h.results_meta = {}
    h.failures = []
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results = {}
    try:
        h.make_certs()
        h.start_app()
        load_before = loadavg()
        log(f"machine: {os.cpu_count()} CPUs; load {load_before}; scenarios "
            f"{','.join(a.scenarios)}; contenders {','.join(a.contenders)}"
            + ("; smoke mode" if a.smoke else ""))
        if "C" in a.scenarios:
            results["C"] = scenario_C(h)
            log(f"C: {results['C']}")
        need_front = any(s in a.scenarios for s in "ANBEDP")
        need_tunnel = "T" in a.scenarios or "P" in a.scenarios
        cs = []
        for name in a.contenders:
            cls = CLASSES[name]
            if (cls.group == "front" and not need_front) or (cls.group == "tunnel" and not need_tunnel):
                continue
            c = cls(h)
            t0 = time.monotonic()
            try:
                try:
                    c.start()
                    c.check()
                except BenchError:
                    raise
                except Exception as e:
                    raise BenchError(f"{name} did not start: {e!r}")
            except BenchError as e:
                fail(h, "start", name, e)
                with contextlib.suppress(Exception):
                    c.stop()
                continue
            log(f"{name}: up in {time.monotonic() - t0:.1f} s at {c.url()}")
            for k, v in c.extra.items():
                if k.startswith("agent_idle_"):
                    h.results_meta[k] = v
            cs.append(c)
        front = [c for c in cs if c.group == "front"]
        tunnel = [c for c in cs if c.group == "tunnel"]
        for s in a.scenarios:
            t0 = time.monotonic()
            if s in "ANBED" and front:
                results[s] = {"A": scenario_A, "N": scenario_N, "B": scenario_B, "E": scenario_E,
                              "D": scenario_D}[s](h, front)
            elif s == "T" and tunnel:
                results["T-A"] = scenario_A(h, tunnel, "T-A")
                results["T-B"] = scenario_B(h, tunnel, "T-B")
                results["T-E"] = scenario_E(h, tunnel, "T-E")
                results["T-D"] = scenario_D(h, tunnel, "T-D")
            elif s == "P":
                results["P"] = scenario_P(h, cs)
            elif s == "R":
                try:
                    results["R"] = scenario_R(h)
                    log(f"R: {results['R']}")
                except BenchError as e:
                    fail(h, "R", "jobgate", e)
            elif s == "I":
                try:
                    results["I"] = idle.scenario_I(h, sys.modules[__name__])
                except BenchError as e:
                    fail(h, "I", "jobgate", e)
            else:
                continue
            log(f"scenario {s} done in {time.monotonic() - t0:.1f} s")
        md_stem = started.strftime("%Y-%m-%d")
        if not a.smoke and not a.no_results:
            resdir = os.path.join(HERE, "results")
            os.makedirs(resdir, exist_ok=True)
            k = 1
            while os.path.exists(os.path.join(resdir, md_stem + ".md")):
                k += 1
                md_stem = f"{started:%Y-%m-%d}-{k}"
            h.results_meta["charts"] = charts(h, results, resdir, md_stem)
            md = report(h, results, cs, started, load_before)
            path = os.path.join(resdir, md_stem + ".md")
            with open(path, "w") as f:
                f.write(md)
            update_readme(md, f"results/{md_stem}.md")
            log(f"results: {path}")
        else:
            md = report(h, results, cs, started, load_before)
        with open(os.path.join(a.out, "summary.md"), "w") as f:
            f.write(md)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print(md)
        log(f"done in {time.monotonic() - t_start:.0f} s; summary in {a.out}/summary.md")
    finally:
        h.cleanup()
    if h.failures:
        for label, name, msg in h.failures:
            log(f"FAILED: {label}: {name}: {msg}")
        return 1
    return 0


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(1)
