"""A real OpenSSH sshd for the `jobgate run --via ssh:HOST` tests.

Everything lives in one temporary directory (mode 0700): an ed25519 host key and user key,
sshd_config, authorized_keys, known_hosts (the host key pinned under the alias), ssh_config,
and bin/ (a `jobgate` symlink to the build's binary, first on the remote PATH). sshd runs
as `sshd -D -e -f sshd_config` through conftest's spawn (so the end-of-session sweep kills it)
and accepts only that user key, for the current user (root in CI: PermitRootLogin
prohibit-password); no PAM, no password, no forwarding, no agent.

    ssh -F <dir>/ssh_config testhost CMD          # Sshd.ssh("CMD", ...) does this

Where it runs:
  * Sshd() - on 127.0.0.1 of the root namespace;
  * Sshd(topology, host="login", client="node") - inside the login namespace, listening on
    every address there; `testhost` is login as seen from `client` (its address on that
    link), `testhost.<h>` as seen from host h (`testhost.login` is 127.0.0.1 inside login).

The remote session's environment is set through authorized_keys `environment="NAME=VALUE"`
options (sshd_config: PermitUserEnvironment yes), which sshd reads at every login, so
set_env() takes effect for the next connection without restarting sshd. It always holds
JOBGATE_TEST_TAG (conftest's sweep finds session processes too), JOBGATE_TEST_SSHD (stop()
finds them: sshd puts each connection in a session of its own, out of reach of kill_group)
and PATH with bin/ first. For a gateway: set_env(JOBGATE_CONTROL=str(gw.control_path)).

The agent side: agent_env() is {"JOBGATE_SSH": "ssh -F <dir>/ssh_config",
"JOBGATE_REMOTE_JOBGATE": <abs path of build/jobgate>}, then `jobgate run --via ssh:testhost`.

Note: the remote command runs under the user's login shell (bash for root), which reads
~/.bashrc for commands over ssh (Debian); a PATH it prepends comes before bin/.
"""
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import (JOBGATE, JOBGATED, TAG, _logs, free_port, kill_group, mkdtemp,
                      pids_marked, spawn, tail)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
ALIAS = "testhost"
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SshUnavailable(Exception):
    pass


def unavailable_reason():
    for exe, pkg in ((SSHD, "openssh-server"), (SSH, "openssh-client"),
                     (SSH_KEYGEN, "openssh-client")):
        if not os.access(exe, os.X_OK):
            return f"{exe} not found (Debian package {pkg}; `scripts/install-deps test`)"
    return None


def _env_quote(v):
    # authorized_keys option values are double-quoted; \" and \\ are the escapes.
    v = str(v)
    if "\n" in v:
        raise ValueError(f"newline in an environment value: {v!r}")
    return v.replace("\\", "\\\\").replace('"', '\\"')


def _proc_start(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# Marks the sshd processes (and sessions) of this test process: pid.start_time.
OWNER = f"{os.getpid()}.{_proc_start(os.getpid())}"


def _owner_gone(pid, start):
    return _proc_start(int(pid)) != int(start)


_STALE_DIR = re.compile(r"/tmp/jgssh-(\d+)\.(\d+)-")


def cleanup_stale():
    """Kills sshds, their sessions and ssh clients left by a test process that is gone
    (killed before its teardown and conftest's sweep could run), and removes their
    directories. sshd overwrites its environment with its process title, so the daemon is
    known by its command line (-f /tmp/jgssh-<owner>-.../sshd_config), its sessions by
    JOBGATE_TEST_SSHD_OWNER. Returns the pids killed."""
    killed = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmdline = f.read().decode("utf-8", "replace")
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        owners = [m.groups() for m in _STALE_DIR.finditer(cmdline)]
        for v in env:
            if v.startswith(b"JOBGATE_TEST_SSHD_OWNER="):
                owners.append(v.split(b"=", 1)[1].decode().partition(".")[::2])
        if any(p.isdigit() and st.isdigit() and _owner_gone(p, st) for p, st in owners):
            with contextlib.suppress(OSError):
                os.kill(int(d), signal.SIGKILL)
                killed.append(int(d))
    for d in os.listdir("/tmp"):
        m = _STALE_DIR.match(f"/tmp/{d}")
        if m and _owner_gone(*m.groups()):
            shutil.rmtree(f"/tmp/{d}", ignore_errors=True)
    return killed


class Sshd:
    def __init__(self, topology=None, host="login", client="node", alias=ALIAS, env=None):
        reason = unavailable_reason()
        if reason:
            raise SshUnavailable(reason)
        self.topo, self.host, self.client, self.alias = topology, host, client, alias
        self.id = uuid.uuid4().hex[:12]
        cleanup_stale()
        self.dir = mkdtemp(f"jgssh-{OWNER}-")  # the owner: see cleanup_stale
        self.port = free_port()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.log_path = self.dir / "sshd.log"
        self.config_path = self.dir / "sshd_config"
        self.ssh_config = self.dir / "ssh_config"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys = self.dir / "authorized_keys"
        self.host_key = self.dir / "host_ed25519"
        self.user_key = self.dir / "id_ed25519"
        self.bin = self.dir / "bin"
        self.bin.mkdir()
        self.home = self.dir / "home"
        self.home.mkdir(mode=0o700)
        (self.bin / "jobgate").symlink_to(JOBGATE)
        (self.bin / "jobgated").symlink_to(JOBGATED)
        for key, comment in ((self.host_key, "jobgate-test-host"),
                             (self.user_key, "jobgate-test-user")):
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                            "-f", str(key)], check=True, capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        host_pub = (self.dir / "host_ed25519.pub").read_text().split()
        # Pinned under the alias (HostKeyAlias in ssh_config), whatever address is dialled.
        self.known_hosts.write_text(f"{alias} {host_pub[0]} {host_pub[1]}\n")
        self.env = {}
        self.set_env(**(env or {}))
        listen = "0.0.0.0" if topology else "127.0.0.1"
        self.config_path.write_text(f"""\
# jobgate tests: sshd for one test module ({self.id})
Port {self.port}
ListenAddress {listen}
HostKey {self.host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.authorized_keys}
# The files live under /tmp (mode 1777), which StrictModes would refuse.
StrictModes no
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {self.user}
# The session environment comes from authorized_keys environment="..." options.
PermitUserEnvironment yes
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
LoginGraceTime 30
LogLevel VERBOSE
""")
        self.config_path.chmod(0o600)
        hosts = {alias: self._addr_from(client if topology else None)}
        if topology:
            for h in topology.addrs(host):
                hosts[f"{alias}.{h}"] = self._addr_from(h)
            hosts[f"{alias}.{host}"] = "127.0.0.1"
        self.ssh_config.write_text("".join(f"""\
Host {name}
  HostName {addr}
""" for name, addr in hosts.items()) + f"""
Host *
  Port {self.port}
  User {self.user}
  HostKeyAlias {alias}
  UserKnownHostsFile {self.known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  CheckHostIP no
  IdentityFile {self.user_key}
  IdentitiesOnly yes
  IdentityAgent none
  BatchMode yes
  PasswordAuthentication no
  KbdInteractiveAuthentication no
  ForwardAgent no
  ForwardX11 no
  ClearAllForwardings yes
  ControlMaster no
  ControlPath none
  RequestTTY no
  EscapeChar none
  PermitLocalCommand no
  # The classic key exchange: half the time of 9.x's post-quantum default per login.
  KexAlgorithms curve25519-sha256
  ConnectTimeout 5
  ServerAliveInterval 15
  ServerAliveCountMax 3
  LogLevel ERROR
""")
        self.ssh_config.chmod(0o600)
        self.proc = None

    def _addr_from(self, peer):
        if self.topo is None:
            return "127.0.0.1"
        return self.topo.addr(self.host, peer)

    # -- the remote environment
    def session_env(self):
        # HOME: an empty directory, so that the user's dotfiles (~/.bashrc, read by bash for
        # commands over ssh) neither change PATH nor slow every login down.
        env = {"HOME": str(self.home), "PATH": f"{self.bin}:{STD_PATH}",
               "JOBGATE_TEST_TAG": TAG, "JOBGATE_TEST_SSHD": self.id,
               "JOBGATE_TEST_SSHD_OWNER": OWNER}
        env.update(self.env)
        return env

    def set_env(self, **kv):
        """Sets (value None: removes) variables of the remote sessions from the next login."""
        for k, v in kv.items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = str(v)
        pub = (self.dir / "id_ed25519.pub").read_text().strip()
        opts = ["restrict"] + [f'environment="{k}={_env_quote(v)}"'
                               for k, v in self.session_env().items()]
        tmp = self.authorized_keys.with_suffix(".tmp")
        tmp.write_text(",".join(opts) + " " + pub + "\n")
        tmp.chmod(0o600)
        os.replace(tmp, self.authorized_keys)

    def for_gateway(self, gw):
        """Remote sessions talk to gw's control socket."""
        self.set_env(JOBGATE_CONTROL=str(gw.control_path))
        return self

    # -- the client side
    @property
    def jobgate_ssh(self):
        """The value of JOBGATE_SSH: the ssh command, before HOST CMD."""
        return f"{SSH} -F {self.ssh_config}"

    def agent_env(self):
        return {"JOBGATE_SSH": self.jobgate_ssh, "JOBGATE_REMOTE_JOBGATE": JOBGATE}

    def ssh_argv(self, *cmd, host=None):
        return [SSH, "-F", str(self.ssh_config), host or self.alias, *map(str, cmd)]

    def ssh(self, *cmd, client=None, host=None, timeout=30, check=False, hide=(), **kw):
        """Runs `ssh -F ssh_config testhost CMD...` (in client's namespace with a topology;
        default: the one given at construction) and returns the CompletedProcess (bytes).
        The remote shell parses CMD as one string, like ssh itself."""
        argv = self.ssh_argv(*cmd, host=host)
        kw.setdefault("stdin", subprocess.DEVNULL)
        if self.topo is not None:
            return self.topo.run(client or self.client, argv, timeout=timeout, check=check,
                                 hide=hide, **kw)
        if "stdout" not in kw and "stderr" not in kw:
            kw["capture_output"] = True
        env = dict(os.environ, JOBGATE_TEST_TAG=TAG)
        try:
            r = subprocess.run(argv, timeout=timeout, env=env, **kw)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{argv} still running after {timeout} s "
                                 f"(stdout {e.stdout!r}, stderr {e.stderr!r}); sshd log:\n"
                                 f"{tail(self.log_path)}")
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} exited with {r.returncode}: stdout {r.stdout!r}, "
                                 f"stderr {r.stderr!r}; sshd log:\n{tail(self.log_path)}")
        return r

    # -- lifecycle
    def _connectable(self):
        if self.topo is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        return self.topo.connectable(self.host, "127.0.0.1", self.port)

    def start(self, timeout=10):
        # Privilege separation needs its empty directory (made by the package's service).
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        chk = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
        if chk.returncode != 0:
            raise AssertionError(f"sshd -t refused {self.config_path}: {chk.stderr}")
        argv = [SSHD, "-D", "-e", "-f", str(self.config_path)]
        env = dict(os.environ, JOBGATE_TEST_SSHD=self.id, JOBGATE_TEST_SSHD_OWNER=OWNER)
        log = open(self.log_path, "ab")
        if self.topo is not None:
            self.proc = self.topo.popen(self.host, argv, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        else:
            self.proc = spawn(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT)
        log.close()
        _logs[f"sshd {self.id}"] = self.log_path
        deadline = time.monotonic() + timeout
        while not self._connectable():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited with {self.proc.returncode}:\n"
                                     f"{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sshd not listening on port {self.port} within "
                                     f"{timeout} s:\n{tail(self.log_path)}")
            time.sleep(0.05)
        return self

    def session_pids(self):
        """Live processes of this sshd's connections and sessions (not the listener)."""
        return [p for p in pids_marked(f"JOBGATE_TEST_SSHD={self.id}")
                if self.proc is None or p != self.proc.pid]

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc, timeout=3)
        for _ in range(50):
            pids = pids_marked(f"JOBGATE_TEST_SSHD={self.id}")
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        _logs.pop(f"sshd {self.id}", None)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.cleanup()


def make_sshd(topology=None, **kw):
    """A started Sshd, or pytest.skip when OpenSSH is not installed."""
    try:
        s = Sshd(topology, **kw)
    except SshUnavailable as e:
        pytest.skip(f"sshd unavailable: {e}")
    try:
        return s.start()
    except BaseException:
        s.cleanup()
        raise


@pytest.fixture(scope="module")
def sshd_server(binaries):
    """sshd on 127.0.0.1 of the root namespace; `testhost` is it."""
    s = make_sshd()
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def login_sshd(topology):
    """sshd in the topology's login; `testhost` is login as seen from node."""
    s = make_sshd(topology, host="login", client="node")
    yield s
    s.cleanup()
