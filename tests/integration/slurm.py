"""A real single-node Slurm for the cluster tests: Debian's slurmctld and slurmd (22.05), run
as root in the foreground (-D) with a throw-away configuration in one temporary directory,
on 127.0.0.1, authenticated by the tests' own munged, with spank_jobgate.so in its
plugstack.conf pointing at a test jobgated beside it (the fixture's `gateway`) over the node
channel.

    cluster = Slurm(munged, plugin_args="gateway=https://localhost:8443 ca=…")
    job = cluster.sbatch(user, "--jobgate", "--wrap", "env")   # as that user
    cluster.wait_job(job)              # until it ended; its state
    cluster.output(job)                # what it printed

What the machine must allow (CI's does, as root): `ProctrackType=proctrack/linuxproc` and
`TaskPlugin=task/none` (no cgroups needed), `AuthInfo=socket=` naming the tests' munged.
Users: jobs run as test users that `cluster_user()` creates (useradd) when they are missing;
Slurm needs them in the passwd database. Every daemon runs through conftest's spawn (its
process group, the tests' tag in its environment), so slurmstepd and the jobs, which inherit
it, are swept with them.
"""
import os
import pwd
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (BUILD, Gateway, free_port, kill_group, mkdtemp, spawn, start_gateway,
                      tail, wait_for, _finish, _logs)

SLURMCTLD, SLURMD = "/usr/sbin/slurmctld", "/usr/sbin/slurmd"
SBATCH, SCONTROL, SQUEUE, SCANCEL = (shutil.which(x) or f"/usr/bin/{x}"
                                     for x in ("sbatch", "scontrol", "squeue", "scancel"))
PLUGIN = BUILD / "spank_jobgate.so"
NODE = "jgnode"


def unavailable_reason():
    if os.geteuid() != 0:
        return "a test Slurm runs as root"
    for exe, pkg in ((SLURMCTLD, "slurmctld"), (SLURMD, "slurmd"), (SBATCH, "slurm-client")):
        if not os.access(exe, os.X_OK):
            return f"{exe} not found (Debian package {pkg}; `scripts/install-deps test`)"
    if not PLUGIN.exists():
        return f"{PLUGIN} not built (Debian package libslurm-dev; `make`)"
    return None


def cluster_user(name):
    """The uid and gid of a test user, made (no home, no login) when missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


class Slurm:
    def __init__(self, munged, plugin_args="", plugin_required=True, topo=None):
        """topo: a netns.Topology: slurmctld (and the commands) on its "login" host, slurmd and
        the jobs on "node", each at its own address; else everything on 127.0.0.1."""
        self.munged = munged
        self.topo = topo
        self.dir = mkdtemp("jgslurm-")
        os.chmod(self.dir, 0o755)
        self.jobs_dir = self.dir / "jobdirs"        # the plugin's dir=
        self.out_dir = self.dir / "out"            # the jobs' output (0777, sticky)
        os.makedirs(self.out_dir)
        os.chmod(self.out_dir, 0o1777)
        for d in ("state", "spool"):
            os.makedirs(self.dir / d, mode=0o700)
        self.conf = self.dir / "slurm.conf"
        self.plugstack = self.dir / "plugstack.conf"
        self.ctld_log, self.slurmd_log = self.dir / "slurmctld.log", self.dir / "slurmd.log"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.write_plugstack(plugin_args, plugin_required)
        ctld_port, slurmd_port = free_port(), free_port()
        ctld_addr = topo.addr("login", "node") if topo else "127.0.0.1"
        node_addr = topo.addr("node") if topo else "127.0.0.1"
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
ClusterName=jgtest
SlurmctldHost={socket.gethostname()}({ctld_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munged.socket}
CredType=cred/munge
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.pid
SlurmdPidFile={self.dir}/slurmd.pid
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=debug2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
PlugStackConfig={self.plugstack}
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr={node_addr} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
        _logs["slurmctld"] = str(self.ctld_log)
        _logs["slurmd"] = str(self.slurmd_log)
        def start(host, argv, err):
            kw = dict(env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=open(self.dir / err, "wb"))
            if topo:
                # The host's network only (nsenter): `ip netns exec` would mount a sysfs
                # of its own, without the cgroup tree that slurmd wants.
                from netns import NETNS_DIR
                argv = ["nsenter", f"--net={NETNS_DIR / topo.ns[host]}", *argv]
            return spawn(argv, **kw)
        self.ctld = start("login", [SLURMCTLD, "-D", "-i", "-f", str(self.conf)], "slurmctld.err")
        self.slurmd = start("node", [SLURMD, "-D", "-N", NODE, "-f", str(self.conf)],
                            "slurmd.err")
        try:
            wait_for(lambda: (self.node_state() or "").split("+")[0] in ("IDLE", "MIXED", "ALLOCATED")
                     or self.ctld.poll() is not None or self.slurmd.poll() is not None,
                     60, interval=0.5, what="the Slurm node to come up")
            assert self.ctld.poll() is None and self.slurmd.poll() is None, self.logs()
        except BaseException:
            self.stop()
            raise

    def write_plugstack(self, plugin_args, required=True):
        self.plugstack.write_text(f"{'required' if required else 'optional'} {PLUGIN} "
                                  f"dir={self.jobs_dir} {plugin_args}\n")

    def logs(self):
        return "\n".join(f"--- {p}\n{tail(p)}" for p in
                         (self.ctld_log, self.slurmd_log, self.dir / "slurmctld.err",
                          self.dir / "slurmd.err") if os.path.exists(p))

    def run(self, *args, user=None, check=True, timeout=30):
        pre = []
        if user:
            uid, gid = cluster_user(user)
            pre = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
        argv = pre + [str(a) for a in args]
        if self.topo:
            argv = self.topo.argv("login", argv)
        p = subprocess.run(argv, env=self.env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.out_dir)
        if check and p.returncode:
            raise AssertionError(f"{' '.join(map(str, args))}: exit {p.returncode}\n"
                                 f"{p.stdout}{p.stderr}\n{self.logs()}")
        return p

    def node_state(self):
        """The node's state with its flags, as scontrol shows it: IDLE, IDLE+COMPLETING…"""
        p = self.run(SCONTROL, "show", "node", NODE, check=False, timeout=10)
        m = re.search(r"\bState=(\S+)", p.stdout)
        return m.group(1) if m else None

    def wait_idle(self, timeout=30):
        """Until no job is left on the node, epilogs included (a test that rewrites
        plugstack.conf must not change it under another job's epilog)."""
        wait_for(lambda: self.node_state() == "IDLE", timeout, interval=0.3,
                 what=f"the node to be idle (it is {self.node_state()})")

    def sbatch(self, user, *args):
        """Submits a job as user; its id."""
        p = self.run(SBATCH, "--parsable", f"--output={self.out_dir}/%j.out", *args, user=user)
        return int(p.stdout.strip().split(";")[0])

    def job_state(self, job):
        p = self.run(SCONTROL, "show", "job", str(job), check=False, timeout=10)
        m = re.search(r"\bJobState=(\w+)", p.stdout)
        return m.group(1) if m else None

    def wait_job(self, job, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                    "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"),
                 timeout=60):
        last = [None]

        def done():
            last[0] = self.job_state(job)
            return last[0] in states
        try:
            wait_for(done, timeout, interval=0.3, what=f"job {job} to reach {states}")
        except AssertionError:
            raise AssertionError(f"job {job} is {last[0]}\n{self.logs()}")
        return last[0]

    def output(self, job):
        p = self.out_dir / f"{job}.out"
        return p.read_text() if p.exists() else ""

    def stop(self):
        for p in (self.slurmd, self.ctld):
            if p is not None:
                kill_group(p, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def plugin_args(gw, munged):
    """The plugin's arguments for a test gateway: its URL, its self-signed certificate as the
    CA, the tests' munged."""
    return (f"gateway=https://localhost:{gw.port} ca={gw.state_dir / 'tls.crt'} "
            f"munge_socket={munged.socket}")


def _need_slurm():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


def _cluster_with_gateway(munged, gw, plugin_args, topo=None):
    """A Slurm whose nodes reach gw (not started yet: it needs the cluster's SLURM_CONF for
    squeue), gw started; the fixtures yield it and call _stop_cluster."""
    c = Slurm(munged, plugin_args=plugin_args, topo=topo)
    c.gateway = gw
    try:
        gw.env["SLURM_CONF"] = str(c.conf)
        start_gateway(gw)
    except BaseException:
        c.stop()
        raise
    return c


def _stop_cluster(c):
    c.stop()
    _finish(c.gateway)


@pytest.fixture(scope="module")
def slurm_cluster(munged, binaries):
    """The test Slurm with a shared jobgated (as root) beside it: the nodes reach it over the
    node channel, and it asks this Slurm's squeue about jobs every second (the reaper)."""
    _need_slurm()
    gw = Gateway({"tunnel": {"munge_socket": munged.socket},
                  "slurm": {"job_check": "1s", "squeue": SQUEUE}}, name="slurm")
    c = _cluster_with_gateway(munged, gw, plugin_args(gw, munged))
    yield c
    _stop_cluster(c)


@pytest.fixture(scope="module")
def slurm_ns_cluster(topology, munged, binaries):
    """The test Slurm across the namespace topology (netns.py): slurmctld and a shared
    jobgated on "login", slurmd and the jobs on "node" at node's own address, so that the
    gateway dials a job's endpoint over the network (direct routes)."""
    from netns import NsGateway
    _need_slurm()
    gw = NsGateway(topology, config={"tunnel": {"munge_socket": munged.socket},
                                     "slurm": {"job_check": "1s", "squeue": SQUEUE}},
                   name="slurm-ns")
    args = f"gateway={gw.url('node')} ca={gw.ca_path} munge_socket={munged.socket}"
    c = _cluster_with_gateway(munged, gw, args, topo=topology)
    yield c
    _stop_cluster(c)
