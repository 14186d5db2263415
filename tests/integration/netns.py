"""Three hosts in network namespaces, for the tests that need more than loopback.

    outside (the browser) --10.231.1.0/24-- login (the gateway) --10.231.2.0/24-- node (agent, app)

Each host is a network namespace of its own, named ``jgt-<pid>.<start>-<tag>-<seq>-<host>``
(``<pid>.<start>`` identifies the pytest process that made it, ``<tag>`` is conftest's TAG),
with lo up and one veth per link. login has the address .1 on both links, outside and node
.2. outside routes 10.231.2.0/24 through login and node's default route is login, as if login
were a router: the *only* thing that keeps outside from node is that login does not forward
(net.ipv4.ip_forward = 0, set explicitly), which test_topology asserts both ways.

Inside each namespace (only for processes started through ``ip netns exec``, i.e. popen/run)
/etc/hosts maps ``login.test`` (DOMAIN) and ``login`` to login's address on that host's link;
add more names with ``Topology.add_hosts``. Everything else is shared with the root namespace:
the filesystem (so a control socket is reachable from every host: ``hide=`` mounts empty
tmpfs over directories for one process), users, pids.

In-process sockets: ``Topology.socket(host)`` creates a socket *inside* a namespace (setns in
the calling thread just for socket(2), then back), and the socket stays there; so the test
process itself can be the browser on outside (``NsRawConn``, ``NsGateway.login``) without a
subprocess. Names are not resolved for these: use addresses.

    # topology, login_gateway and login_sshd are fixtures (module scope) that conftest's
    # pytest_plugins = ["netns", "sshd"] gives every test module: no import needed.

    def test_app_on_login(topology, login_gateway):
        app = login_gateway.publish_http()                # `jobgate run` in login
        s = login_gateway.login(app.alias, app.link)      # redeemed from outside
        assert s.get("/hello").body == b"hello\\n"

    def test_agent_on_node_dials_out(topology, login_gateway):
        gw = login_gateway
        # `jobgate run -g https://10.231.2.1:PORT` in node, with no view of the control
        # socket (gateway dirs hidden, JOBGATE_CONTROL unset); gw.url("node", by_name=True)
        # is https://login.test:PORT. The certificate at ca_path covers both.
        app = gw.publish_http(host="node", extra=["-g", gw.url("node")],
                              env_extra={"JOBGATE_CA": str(gw.ca_path)})
        assert topology.host_of_pid(app.proc.pid) == "node"
        s = gw.login(app.alias, app.link)                 # the browser, on outside
        assert s.get("/hello").body == b"hello\\n"

    def test_agent_via_ssh(topology, login_gateway, login_sshd):
        login_sshd.for_gateway(login_gateway)             # remote JOBGATE_CONTROL
        app = login_gateway.publish_http(host="node", extra=["--via", "ssh:testhost"],
                                         env_extra=login_sshd.agent_env())
        ...
"""
import atexit
import contextlib
import ctypes
import errno
import functools
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (HTTPAPP, JOBGATE, PY, TAG, Gateway, PublishedApp, RawConn, _finish, _logs,
                      kill_group, mkdtemp, spawn, start_gateway, tail, unix_connectable)

HOSTS = ("outside", "login", "node")
DOMAIN = "login.test"
# (host a, host b, /24 prefix, a's host number, b's host number)
LINKS = (("outside", "login", "10.231.1", 2, 1),
         ("login", "node", "10.231.2", 1, 2))
PREFIX = "jgt-"
NAME_RE = re.compile(r"^jgt-(\d+)\.(\d+)-[0-9a-f]+-\d+-[a-z]+$")
_STALE_TMP = re.compile(r"^(?:jgt|jgpki)-(\d+)\.(\d+)-")  # directories under /tmp
NETNS_DIR = pathlib.Path("/run/netns")
ETC_NETNS = pathlib.Path("/etc/netns")
IP = shutil.which("ip") or "/usr/sbin/ip"

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.RLock()

# Mounts an empty tmpfs over each directory before "--", then runs the rest. `ip netns exec`
# has already given the process a mount namespace of its own (a slave of the root one), so
# the mounts are seen by this process and its children only.
_HIDE_SH = ('while [ "$1" != -- ]; do mount -t tmpfs -o size=64k,mode=0700 jgt-hidden "$1" '
            '|| exit 125; shift; done; shift; exec "$@"')


class NetnsUnavailable(Exception):
    pass


def _proc_start(pid):
    """The start time of pid (clock ticks since boot), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


MY_ID = f"{os.getpid()}.{_proc_start(os.getpid())}"


def _ip(*args, check=True, timeout=10):
    r = subprocess.run([IP, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(map(str, args))}` failed ({r.returncode}): "
                           f"{r.stderr.strip() or r.stdout.strip()}")
    return r


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def entered(nsname):
    """Runs the body with the calling thread in network namespace nsname (then back)."""
    target = os.open(NETNS_DIR / nsname, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _setns_lock:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
                try:
                    yield
                finally:
                    _setns(home)
            finally:
                os.close(home)
    finally:
        os.close(target)


def _ns_pids(nsname):
    r = _ip("netns", "pids", nsname, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _kill_ns(nsname, timeout=5.0):
    """SIGKILLs every process in the namespace and waits until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _ns_pids(nsname)
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _delete_ns(nsname):
    if (NETNS_DIR / nsname).exists():
        _kill_ns(nsname)
        _ip("netns", "del", nsname, check=False)
    shutil.rmtree(ETC_NETNS / nsname, ignore_errors=True)


def cleanup_stale():
    """Removes namespaces (and their processes, veths and /etc/netns files) left by a test
    process that is gone: one whose pid is not running or runs something started at another
    time. Returns the names removed."""
    names = set()
    for d in (NETNS_DIR, ETC_NETNS):
        with contextlib.suppress(OSError):
            names.update(n for n in os.listdir(d) if n.startswith(PREFIX))
    removed = []
    for n in sorted(names):
        m = NAME_RE.match(n)
        if not m:
            continue
        pid, start = int(m.group(1)), int(m.group(2))
        if _proc_start(pid) == start:
            continue  # its test process still runs (this one, or a concurrent run)
        _delete_ns(n)
        removed.append(n)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty
    for d in os.listdir("/tmp"):
        m = _STALE_TMP.match(d)
        if m and _proc_start(int(m.group(1))) != int(m.group(2)):
            shutil.rmtree(f"/tmp/{d}", ignore_errors=True)
    return removed


_live = []
_seq = [0]


@atexit.register
def _destroy_all():
    for t in list(_live):
        with contextlib.suppress(Exception):
            t.destroy()


class Topology:
    """outside -- login -- node; see the module docstring. Use Topology.create() (or the
    `topology` fixture) and destroy() (or `with`)."""

    def __init__(self):
        _seq[0] += 1
        self.id = f"{MY_ID}-{TAG[:8]}-{_seq[0]}"
        self.ns = {h: f"{PREFIX}{self.id}-{h}" for h in HOSTS}
        self.dir = mkdtemp(f"jgt-{MY_ID}-")  # per-topology files (homes of other hosts)
        self._addrs = {h: {} for h in HOSTS}  # host -> {peer: address}
        for a, b, net, na, nb in LINKS:
            self._addrs[a][b] = f"{net}.{na}"
            self._addrs[b][a] = f"{net}.{nb}"
        self.subnets = {frozenset((a, b)): f"{net}.0/24" for a, b, net, _, _ in LINKS}
        self._procs = []
        self._made = []
        self.destroyed = False

    # -- lifecycle
    @classmethod
    def create(cls):
        """Builds the three namespaces; NetnsUnavailable (with the reason) if this host
        cannot make network namespaces."""
        if not os.access(IP, os.X_OK):
            raise NetnsUnavailable("`ip` (iproute2) not found")
        cleanup_stale()
        t = cls()
        try:
            t._setup()
        except BaseException:
            t.destroy()
            raise
        return t

    def _setup(self):
        _live.append(self)
        first = True
        for h in HOSTS:
            r = _ip("netns", "add", self.ns[h], check=False)
            if r.returncode != 0:
                why = r.stderr.strip() or f"`ip netns add` exited with {r.returncode}"
                if first:
                    raise NetnsUnavailable(f"{why} (euid {os.geteuid()})")
                raise RuntimeError(why)
            first = False
            self._made.append(self.ns[h])
            _ip("-n", self.ns[h], "link", "set", "lo", "up")
        try:  # also proves that this process can enter them (setns needs CAP_SYS_ADMIN)
            self.socket("login").close()
        except OSError as e:
            raise NetnsUnavailable(f"cannot enter a network namespace: {e}")
        for a, b, net, na, nb in LINKS:
            # Made directly inside the namespaces: nothing ever appears in the root one, and
            # the names only need to be unique within each namespace.
            _ip("link", "add", f"to-{b}", "netns", self.ns[a], "type", "veth",
                "peer", "name", f"to-{a}", "netns", self.ns[b])
            for h, peer, n in ((a, b, na), (b, a, nb)):
                _ip("-n", self.ns[h], "addr", "add", f"{net}.{n}/24", "dev", f"to-{peer}")
                _ip("-n", self.ns[h], "link", "set", f"to-{peer}", "up")
        # Routes as if login were a router (so that only its forwarding setting isolates).
        _ip("-n", self.ns["outside"], "route", "add", self.subnets[frozenset(("login", "node"))],
            "via", self.addr("login", "outside"))
        _ip("-n", self.ns["node"], "route", "add", "default", "via", self.addr("login", "node"))
        for h in HOSTS:
            self.set_forwarding(h, False)
        self._wait_links_up()
        for h in HOSTS:
            d = ETC_NETNS / self.ns[h]
            d.mkdir(parents=True, exist_ok=True)
            la = self.addr("login", h)  # 127.0.0.1 on login itself
            (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
                                     f"{la}\t{DOMAIN} login\n")
            # No DNS server is reachable from the namespaces: let a lookup that /etc/hosts
            # does not answer fail at once (port 53 closed) instead of timing out.
            (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _wait_links_up(self, timeout=10):
        # A veth has no carrier for a moment after both ends are up (linkwatch); a packet
        # sent then is lost, and a test would see a timeout where it expects a connection.
        def down():
            out = []
            for h in HOSTS:
                for line in _ip("-n", self.ns[h], "-o", "link", "show").stdout.splitlines():
                    name = line.split(":")[1].strip().split("@")[0]
                    if name.startswith("to-") and "state UP" not in line:
                        out.append(f"{h}:{name}")
            return out
        deadline = time.monotonic() + timeout
        while down():
            if time.monotonic() > deadline:
                raise RuntimeError(f"veths still down after {timeout} s: {down()}")
            time.sleep(0.02)

    def destroy(self):
        """Ends every process in the namespaces and deletes them (and their veths and
        /etc/netns files). Idempotent; runs from atexit too."""
        if self.destroyed:
            return
        self.destroyed = True
        for p in self._procs:
            with contextlib.suppress(Exception):
                kill_group(p, timeout=2)
        for n in self._made:
            _delete_ns(n)
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.destroy()

    # -- addresses and names
    def addr(self, host, peer=None):
        """host's address on its link to peer (peer may be left out for outside and node,
        which have one link each; login needs it)."""
        links = self._addrs[host]
        if peer is None:
            if len(links) != 1:
                raise ValueError(f"{host} has links to {sorted(links)}: say which peer")
            return next(iter(links.values()))
        if peer == host:
            return "127.0.0.1"
        if peer not in links:
            raise ValueError(f"{host} has no link to {peer} (links: {sorted(links)})")
        return links[peer]

    def addrs(self, host):
        """{peer: address} of host."""
        return dict(self._addrs[host])

    def add_hosts(self, host, names):
        """Adds {name: address} to /etc/hosts as seen by host's processes started from now
        on (e.g. an app's <alias>.login.test, for programs other than curl)."""
        with open(ETC_NETNS / self.ns[host] / "hosts", "a") as f:
            for name, a in names.items():
                f.write(f"{a}\t{name}\n")

    def netns_inode(self, host):
        return os.stat(NETNS_DIR / self.ns[host]).st_ino

    def host_of_pid(self, pid):
        """Which of the three hosts pid runs in (None: none of them)."""
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        for h in HOSTS:
            if self.netns_inode(h) == ino:
                return h
        return None

    # -- forwarding
    def forwarding(self, host):
        r = self.run(host, ["cat", "/proc/sys/net/ipv4/ip_forward"], check=True)
        return r.stdout.strip() == b"1"

    def set_forwarding(self, host, on):
        v = "1" if on else "0"
        self.run(host, ["sh", "-c", f"echo {v} > /proc/sys/net/ipv4/ip_forward && "
                        f"echo {v} > /proc/sys/net/ipv4/conf/all/forwarding && "
                        f"echo {v} > /proc/sys/net/ipv6/conf/all/forwarding"], check=True)

    # -- processes
    def argv(self, host, argv, hide=()):
        """The command line that runs argv in host (with empty tmpfs over each dir in hide)."""
        argv = [str(a) for a in argv]
        if hide:
            argv = ["/bin/sh", "-c", _HIDE_SH, "jgt-hide", *map(str, hide), "--", *argv]
        return [IP, "netns", "exec", self.ns[host], *argv]

    def popen(self, host, argv, hide=(), **kw):
        """Starts argv in host through conftest's spawn (own process group, TAG in its
        environment); ended by destroy() at the latest. kw as for subprocess.Popen."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = spawn(self.argv(host, argv, hide), **kw)
        self._procs.append(p)
        return p

    def run(self, host, argv, hide=(), timeout=30, check=False, env=None, **kw):
        """Runs argv in host to completion (stdout/stderr captured as bytes unless kw says
        otherwise); returns the CompletedProcess."""
        env = dict(os.environ if env is None else env)
        env["JOBGATE_TEST_TAG"] = TAG
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in kw and "stderr" not in kw:
            kw["capture_output"] = True
        args = self.argv(host, argv, hide)
        try:
            r = subprocess.run(args, timeout=timeout, env=env, **kw)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{args} still running after {timeout} s "
                                 f"(stdout {e.stdout!r}, stderr {e.stderr!r})")
        if check and r.returncode != 0:
            raise AssertionError(f"{args} exited with {r.returncode}: stdout {r.stdout!r}, "
                                 f"stderr {r.stderr!r}")
        return r

    # -- sockets from this process
    def socket(self, host, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A socket that lives in host's network namespace (whatever thread uses it later)."""
        with entered(self.ns[host]):
            return socket.socket(family, type)

    def create_connection(self, host, addr, port, timeout=5.0):
        s = self.socket(host)
        try:
            s.settimeout(timeout)
            s.connect((addr, port))
        except BaseException:
            s.close()
            raise
        return s

    def connect_error(self, host, addr, port, timeout=1.0):
        """None if host can open a TCP connection to addr:port, else why not: an errno name
        (ECONNREFUSED means a packet reached a host that answered) or "timeout"."""
        try:
            self.create_connection(host, addr, port, timeout).close()
            return None
        except (socket.timeout, TimeoutError):
            return "timeout"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))

    def connectable(self, host, addr, port, timeout=1.0):
        return self.connect_error(host, addr, port, timeout) is None

    def listen(self, host, addr="0.0.0.0", port=0, backlog=16):
        """A listening TCP socket in host (port 0: any); returns (socket, port)."""
        s = self.socket(host)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(backlog)
        return s, s.getsockname()[1]

    def curl(self, host, url, *args, resolve=(), cacert=None, timeout=20):
        """curl from host (-sS, --max-time; --resolve NAME:PORT:ADDR for each of resolve;
        --cacert or -k). Returns the CompletedProcess (bytes)."""
        argv = ["curl", "-sS", "--max-time", str(timeout)]
        for r in resolve:
            argv += ["--resolve", r]
        argv += ["--cacert", str(cacert)] if cacert else ["-k"]
        argv += [*map(str, args), url]
        return self.run(host, argv, timeout=timeout + 10)


class NsRawConn(RawConn):
    """conftest's RawConn, from a socket in one of the topology's hosts to addr:port."""

    def __init__(self, topo, host, addr, port, sni, timeout=10.0, alpn=True):
        super().__init__(port, sni, timeout, alpn,
                         raw=topo.create_connection(host, addr, port, timeout))


def make_cert(dirpath, names, addrs, days=2):
    """A self-signed certificate for names (and *.names) and IP addresses; (crt, key)."""
    d = pathlib.Path(dirpath)
    crt, key = d / "tls.crt", d / "tls.key"
    san = ",".join([f"DNS:{n}" for n in names] + [f"DNS:*.{n}" for n in names] +
                   [f"IP:{a}" for a in addrs])
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", str(days),
                        "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
                        "-keyout", str(key), "-out", str(crt)],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError(f"openssl req failed: {r.stderr}")
    os.chmod(key, 0o600)
    return crt, key


class NsGateway(Gateway):
    """conftest's Gateway in shared mode, running in one host of a Topology (login).

    listen: "0.0.0.0" (every address of the host: both links and its lo) or one address.
    own_cert: give it a certificate for DOMAIN, *.DOMAIN, login's link addresses and
    127.0.0.1, so that an agent can verify https://<either address>:PORT as well as
    https://login.test:PORT against ca_path (False: the gateway mints its own self-signed one,
    DNS names and 127.0.0.1 only; ca_path is a copy of it).
    client: the host that connect()/login()/Session use as the browser (outside).
    """

    def __init__(self, topo, config=None, host="login", client="outside", listen="0.0.0.0",
                 domain=DOMAIN, own_cert=True, name="login", verbose=False):
        super().__init__(config={}, name=name, verbose=verbose)
        self.topo, self.gw_host, self.client = topo, host, client
        self.listen_addr, self.domain = listen, domain
        # Outside self.root, so that hiding root keeps it visible.
        self.pki = mkdtemp(f"jgpki-{MY_ID}-")
        self.ca_path = self.pki / "tls.crt"
        sections = {"gateway": {"listen": f"{listen}:{self.port}", "domain": domain,
                                "state_dir": str(self.state_dir),
                                "control_socket": str(self.control_path)}}
        if os.geteuid() == 0:
            sections["gateway"]["user"] = "root"  # as conftest's Gateway: stay root
        if own_cert:
            crt, key = make_cert(self.pki, [domain], [*topo.addrs(host).values(), "127.0.0.1"])
            sections["gateway"].update(cert=str(crt), key=str(key))
        self.own_cert = own_cert
        for sec, kv in (config or {}).items():
            sections.setdefault(sec, {}).update(kv)
        self.config_path.write_text("".join(
            f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n"
            for sec, kv in sections.items()))

    def ready_addrs(self):
        if self.listen_addr == "0.0.0.0":
            return ["127.0.0.1", *self.topo.addrs(self.gw_host).values()]
        return [self.listen_addr]

    def start(self, timeout=10):
        self.stopped_on_purpose = False
        log = open(self.log_path, "ab")
        self.proc = self.topo.popen(self.gw_host, self.args(), env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _logs[f"jobgated {self.name}:{self.port}"] = self.log_path
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jobgated exited with {self.proc.returncode} during "
                                     f"startup:\n{tail(self.log_path)}")
            tcp = {a: self.topo.connect_error(self.gw_host, a, self.port, 0.5)
                   for a in self.ready_addrs()}
            if unix_connectable(self.control_path) and not any(tcp.values()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"jobgated not ready in {self.gw_host} within {timeout} s (control socket "
                    f"{self.control_path} connectable: {unix_connectable(self.control_path)}, "
                    f"port {self.port}: {tcp}):\n{tail(self.log_path)}")
            time.sleep(0.05)
        if not self.own_cert:
            shutil.copyfile(self.state_dir / "tls.crt", self.ca_path)
        return self

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.pki, ignore_errors=True)

    # -- where it is
    def address(self, peer=None):
        """The gateway's address as seen from peer (default: the browser host)."""
        return self.topo.addr(self.gw_host, peer or self.client)

    def url(self, peer=None, by_name=False):
        """https://ADDRESS:PORT as seen from peer (e.g. for `jobgate run -g`), or
        https://login.test:PORT (by_name: resolved through the host's /etc/hosts)."""
        return f"https://{self.domain if by_name else self.address(peer)}:{self.port}"

    def resolve(self, alias, peer=None):
        """curl's --resolve value for alias (or the bare domain when alias is None)."""
        name = f"{alias}.{self.domain}" if alias else self.domain
        return f"{name}:{self.port}:{self.address(peer)}"

    def connect(self, alias, timeout=10.0, client=None):
        return NsRawConn(self.topo, client or self.client, self.address(client), self.port,
                         self.sni(alias), timeout)

    def curl(self, alias, path="/", *args, client=None, cookie=None):
        """curl https://<alias>.<domain>:PORT<path> from the client host, verifying the
        certificate against ca_path."""
        client = client or self.client
        extra = ["-H", f"Cookie: __Host-jobgate={cookie}"] if cookie else []
        return self.topo.curl(client, f"https://{alias}.{self.domain}:{self.port}{path}",
                              *extra, *args, resolve=[self.resolve(alias, client)],
                              cacert=self.ca_path)

    # -- the CLI and apps, in any host
    def host_env(self, host):
        """The environment for the CLI and agents on host: the gateway's own on its host;
        elsewhere one without JOBGATE_CONTROL and with HOME/XDG_* of that host."""
        if host == self.gw_host:
            return dict(self.env)
        env = {k: v for k, v in self.env.items() if k != "JOBGATE_CONTROL"}
        home = self.topo.dir / f"home-{host}"
        for sub in ("", "state", "run"):
            (home / sub).mkdir(mode=0o700, exist_ok=True)
        env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"),
                   XDG_RUNTIME_DIR=str(home / "run"))
        return env

    def host_hide(self, host):
        """What to hide from processes on host: the gateway's directories unless it is the
        gateway's own host (the filesystem is shared, the control socket would be too)."""
        return () if host == self.gw_host else (self.root,)

    def cli(self, *args, timeout=20, env_extra=None, host=None):
        host = host or self.gw_host
        env = self.host_env(host)
        env.update(env_extra or {})
        return self.topo.run(host, [JOBGATE, *args], env=env, timeout=timeout,
                             hide=self.host_hide(host))

    def publish(self, app_cmd, json_mode=True, tcp=False, name=None, wait=True, extra=(),
                host=None, env_extra=None):
        """`jobgate run` in host (default: the gateway's). On another host the gateway's
        directories are hidden and JOBGATE_CONTROL unset: pass -g in extra (future tunnel)."""
        host = host or self.gw_host
        args = [JOBGATE, "run"]
        if json_mode:
            args.append("--json")
        if tcp:
            args.append("--tcp")
        if name:
            args += ["-n", name]
        args += [*extra, "--", *app_cmd]
        env = self.host_env(host)
        env.update(env_extra or {})
        return PublishedApp.launch(args, self.root / f"run-{len(self._published)}-{host}.log",
                                   json_mode, wait, self._published,
                                   popen=functools.partial(self.topo.popen, host), env=env,
                                   hide=self.host_hide(host))

    def publish_http(self, tcp=False, name="httpapp", extra_app_args=(), host=None, extra=(),
                     env_extra=None, wait=True):
        where = ["--port", "{port}"] if tcp else ["--unix", "{socket}"]
        return self.publish([PY, HTTPAPP, *where, *extra_app_args], tcp=tcp, name=name,
                            host=host, extra=extra, env_extra=env_extra, wait=wait)


# --------------------------------------------------------------------------- fixtures


def make_topology():
    """Topology.create(), or pytest.skip with the reason when namespaces are unavailable."""
    try:
        return Topology.create()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")


@pytest.fixture(scope="module")
def topology(binaries):
    t = make_topology()
    try:
        yield t
    finally:
        t.destroy()


@pytest.fixture(scope="module")
def login_gateway(topology):
    """A shared-mode gateway in login, listening on 0.0.0.0:PORT (both links), domain
    login.test, its browser on outside."""
    gw = start_gateway(NsGateway(topology))
    yield gw
    _finish(gw)
