"""The Slurm SPANK plugin against a real single-node Slurm (tests/integration/slurm.py):
slurmctld, slurmd and the jobs' slurmstepd load build/spank_jobgate.so from the test
cluster's plugstack.conf; jobs run as a test user."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import HTTPAPP, JOBGATE, PY, free_port, wait_for
from slurm import SCANCEL, cluster_user, plugin_args, slurm_cluster  # noqa: F401

USER = "jgslurm1"

ENV_SCRIPT = ("--wrap", "env | grep ^JOBGATE_ | sort; "
              "[ -n \"$JOBGATE_DIR\" ] && stat -c 'dir %u %a %F' \"$JOBGATE_DIR\" && "
              "stat -c 'file %n %u %a' \"$JOBGATE_DIR\"/* && "
              "openssl x509 -noout -enddate -subject -in \"$JOBGATE_DIR/job.crt\"; true")


PLUGIN_ENV = ("JOBGATE_DIR", "JOBGATE_GATEWAY", "JOBGATE_JOB_ID")


def job_env(text):
    """What the plugin exported, from a job's `env` (the tests' own JOBGATE_* pass through
    sbatch too)."""
    return {k: v for k, v in re.findall(r"^(JOBGATE_\w+)=(.*)$", text, re.M) if k in PLUGIN_ENV}


def test_a_jobgate_job_gets_its_own_directory_and_environment(slurm_cluster):
    c = slurm_cluster
    uid, _ = cluster_user(USER)
    t0 = time.time()
    job = c.sbatch(USER, "--jobgate", "--time=10", *ENV_SCRIPT)
    assert c.wait_job(job) == "COMPLETED", c.logs()
    out = c.output(job)
    env = job_env(out)
    assert env.get("JOBGATE_JOB_ID") == str(job), out
    assert env.get("JOBGATE_GATEWAY") == f"https://localhost:{c.gateway.port}", out
    assert env.get("JOBGATE_DIR") == f"{c.jobs_dir}/{job}", out
    # The job's user alone may enter it; the job's key is the user's alone; the certificate
    # the gateway signed for it, the agent CA and the gateway's CA beside it.
    d = f"{c.jobs_dir}/{job}"
    assert f"dir {uid} 700 directory" in out, out
    for name, mode in (("job.key", 600), ("job.crt", 644), ("ca.crt", 644),
                       ("gateway-ca.crt", 644)):
        assert f"file {d}/{name} {uid} {mode}" in out, out
    # The certificate names the job and its user, and lives for the job's time limit (10
    # minutes, slurmctld's end time) plus the gateway's margin (15 minutes).
    assert re.search(rf"^subject=.*UID = {USER}, CN = job-{job}$", out, re.M), out
    m = re.search(r"^notAfter=(.*)$", out, re.M)
    assert m, out
    end = time.mktime(time.strptime(m.group(1).replace(" GMT", ""), "%b %d %H:%M:%S %Y"))
    end -= time.timezone
    assert t0 + 24 * 60 < end < t0 + 26 * 60, (m.group(1), t0)
    # The gateway recorded the job, and its end.
    log = c.gateway.log_path
    wait_for(lambda: f"job end job={job} " in log.read_text(), 10, what="the job's end at the gateway")
    assert f"job start job={job} uid={uid} user={USER} node=jgnode" in log.read_text()
    # The job's epilog removes it.
    wait_for(lambda: not os.path.exists(f"{c.jobs_dir}/{job}"), 10,
             what="the job directory to go with the job")
    st = os.stat(c.jobs_dir)
    assert st.st_uid == 0 and not st.st_mode & 0o022


def test_a_job_without_jobgate_gets_nothing(slurm_cluster):
    c = slurm_cluster
    job = c.sbatch(USER, *ENV_SCRIPT)
    assert c.wait_job(job) == "COMPLETED", c.logs()
    assert job_env(c.output(job)) == {}
    assert not os.path.exists(f"{c.jobs_dir}/{job}")


def test_the_steps_of_one_job_share_its_directory(slurm_cluster):
    """srun steps inside a --jobgate batch job find the directory the batch step made."""
    c = slurm_cluster
    job = c.sbatch(USER, "--jobgate", "--wrap",
                   "echo batch=$JOBGATE_DIR; srun -n1 sh -c 'echo step=$JOBGATE_DIR'")
    assert c.wait_job(job) == "COMPLETED", c.output(job) + c.logs()
    out = c.output(job)
    assert f"batch={c.jobs_dir}/{job}" in out and f"step={c.jobs_dir}/{job}" in out, out


@pytest.mark.parametrize("cmd", ["srun", "salloc"])
def test_srun_and_salloc_know_jobgate_too(slurm_cluster, cmd):
    """--jobgate on an interactive allocation (salloc, then a step in it) and on a bare srun."""
    c = slurm_cluster
    show = ["sh", "-c", "echo dir=$JOBGATE_DIR id=$JOBGATE_JOB_ID"]
    args = [cmd, "--jobgate"] + (["srun"] if cmd == "salloc" else []) + show
    p = c.run(*args, user=USER, timeout=60)
    m = re.search(r"^dir=(\S+) id=(\d+)$", p.stdout, re.M)
    assert m, p.stdout + p.stderr
    assert m.group(1) == f"{c.jobs_dir}/{m.group(2)}"
    wait_for(lambda: not os.path.exists(m.group(1)), 10, what="the job directory to go")
    # Without the option, nothing.
    p = c.run(*[a for a in args if a != "--jobgate"], user=USER, timeout=60)
    assert re.search(r"^dir= id=$", p.stdout, re.M), p.stdout + p.stderr


def test_a_bad_plugin_argument_is_named_and_fails_jobs_only_when_required(slurm_cluster):
    c = slurm_cluster
    c.wait_idle()
    try:
        # required: sbatch (which loads the plugin too) refuses, naming the argument.
        args = plugin_args(c.gateway, c.munged)
        c.write_plugstack(f"{args} bogus=1", required=True)
        p = c.run("sbatch", "--parsable", "--jobgate", *ENV_SCRIPT, user=USER, check=False)
        assert p.returncode != 0, p.stdout
        assert 'unknown argument "bogus"' in p.stderr, p.stderr
        # optional: the job runs, without jobgate, and slurmd's log names the argument.
        c.write_plugstack(f"{args} bogus=1", required=False)
        job = c.sbatch(USER, "--jobgate", *ENV_SCRIPT)
        assert c.wait_job(job) == "COMPLETED", c.logs()
        assert job_env(c.output(job)) == {}
        wait_for(lambda: 'unknown argument "bogus"' in c.slurmd_log.read_text(errors="replace"),
                 10, what="slurmd's log to name the bad argument")
        c.wait_idle()
    finally:
        c.write_plugstack(plugin_args(c.gateway, c.munged))


def wait_ready_in(c, job, timeout=60):
    """The ready event that `jobgate run --json` printed in job's output."""
    found = {}

    def ready():
        for ln in c.output(job).splitlines():
            try:
                ev = json.loads(ln)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == "ready":
                found.update(ev)
                return True
        assert c.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"job {job} is {c.job_state(job)}:\n{c.output(job)}\n{c.logs()}")
        return False
    wait_for(ready, timeout, interval=0.3, what=f"job {job}'s app to be ready")
    return found


def test_jobgate_run_in_a_job_needs_no_options_and_ends_with_the_job(slurm_cluster):
    """sbatch --jobgate: `jobgate run` finds the gateway and the job's certificate; the route
    carries the job's id, works through a link, and scancel ends it and its sessions."""
    c = slurm_cluster
    gw = c.gateway
    uid, _ = cluster_user(USER)
    job = c.sbatch(USER, "--jobgate", "--wrap",
                   f"exec {JOBGATE} run --json -n nb -- {PY} {HTTPAPP} --unix {{socket}}")
    ev = wait_ready_in(c, job)
    route = [r for r in gw.ls_json() if r["alias"] == ev["alias"]]
    assert route and route[0]["job"] == job and route[0]["uid"] == uid, route
    assert route[0]["backend"].startswith("tunnel:"), route
    # `jobgate ls` shows the job too.
    table = gw.cli("ls").stdout.decode()
    assert re.search(rf"^{ev['alias']}\s+nb\s+{job}\s+tunnel:", table, re.M), table
    assert f"method=jobcert node=" in gw.log_path.read_text()
    s = gw.login(ev["alias"], ev["link"])
    assert s.get("/hello").status == 200
    t0 = time.monotonic()
    c.run(SCANCEL, job)
    wait_for(lambda: not [r for r in gw.ls_json() if r["alias"] == ev["alias"]], 5,
             what="the job's route to go with it")
    assert s.get("/hello").status == 404
    assert time.monotonic() - t0 < 5
    assert c.wait_job(job) == "CANCELLED"


def test_the_reaper_ends_a_job_whose_end_never_reached_the_gateway(slurm_cluster):
    """slurmstepd killed with SIGKILL, and an epilog that cannot reach the gateway: the
    gateway learns from squeue (the reaper, every second here) that the job is over."""
    c = slurm_cluster
    gw = c.gateway
    job = c.sbatch(USER, "--jobgate", "--wrap",
                   f"exec {JOBGATE} run --json -n lost -- {PY} {HTTPAPP} --unix {{socket}}")
    ev = wait_ready_in(c, job)
    s = gw.login(ev["alias"], ev["link"])
    assert s.get("/hello").status == 200
    try:
        # The epilog will say nothing: its gateway is now a closed port.
        closed = plugin_args(gw, c.munged).replace(f":{gw.port} ", f":{free_port()} ")
        c.write_plugstack(closed)
        stepd = subprocess.run(["pgrep", "-f", f"^slurmstepd: \\[{job}\\.batch\\]"],
                               capture_output=True, text=True).stdout.split()
        assert stepd, subprocess.run(["ps", "axf"], capture_output=True, text=True).stdout
        for pid in stepd:
            os.kill(int(pid), signal.SIGKILL)
        c.run(SCANCEL, job)
        wait_for(lambda: not [r for r in gw.ls_json() if r["alias"] == ev["alias"]], 30,
                 what="the reaper to end the job's route")
        assert s.get("/hello").status == 404
        log = gw.log_path.read_text()
        assert re.search(rf"job end job={job} .*\(the scheduler says [A-Z_]+\)", log), log
        wait_for(lambda: "cannot tell the gateway" in c.slurmd_log.read_text(errors="replace"),
                 30, what="the epilog's failed call in slurmd's log")
    finally:
        c.wait_idle(60)
        c.write_plugstack(plugin_args(gw, c.munged))
        # Without its slurmstepd nothing ends the job's processes (this Slurm tracks them by
        # process group): the agent, its tunnel's holder and the app.
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False)


READY_SCRIPT = r"""
import os, socket, sys, time
def listen(host, family=socket.AF_INET):
    s = socket.socket(family)
    s.bind((host, 0))
    s.listen()
    return s
fd = int(os.environ["JOBGATE_READY_FD"])
a = listen("0.0.0.0")
lo = listen("127.0.0.1")              # loopback: not a destination
print("port", a.getsockname()[1], flush=True)
os.write(fd, b"ready\n")
time.sleep(4)
b = listen("::", socket.AF_INET6)     # a second app: say ready again
print("port", b.getsockname()[1], flush=True)
os.write(fd, b"ready\n")
time.sleep(120)
"""


def node_addrs():
    """This machine's addresses as the plugin reports them for a wildcard listener: up,
    not loopback, not link-local. ([IPv4], [IPv6])"""
    out = subprocess.run(["ip", "-j", "addr", "show", "up"], capture_output=True,
                         text=True, check=True).stdout
    v4, v6 = [], []
    for link in json.loads(out):
        if "LOOPBACK" in link.get("flags", []):
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            if a["family"] == "inet" and not a["local"].startswith(("127.", "169.254.")):
                v4.append(a["local"])
            elif a["family"] == "inet6":
                v6.append(a["local"])
    return v4, v6


def test_a_job_that_signals_ready_gets_exactly_its_listeners(slurm_cluster, tmp_path):
    """JOBGATE_READY_FD: the plugin lists the job's own LISTEN sockets through /proc and the
    gateway records them as the job's destinations (`jobgate jobs`), replaced at each signal,
    cleared at the job's end; loopback listeners and other processes' are not among them."""
    c = slurm_cluster
    gw = c.gateway
    script = c.out_dir / "ready.py"
    script.write_text(READY_SCRIPT)
    outsider = socket.socket()
    outsider.bind(("0.0.0.0", 0))  # listening, but not the job's
    outsider.listen()
    job = c.sbatch(USER, "--jobgate", "--wrap", f"exec {PY} {script}")
    try:
        def ports():
            return [int(p) for p in re.findall(r"^port (\d+)$", c.output(job), re.M)]

        def dests():
            js = [j for j in json.loads(gw.cli("jobs", "--json").stdout) if j["job"] == job]
            return js[0]["destinations"] if js else None
        wait_for(lambda: len(ports()) >= 1, 30, what="the job to listen")
        v4, v6 = node_addrs()
        if not v4 and not v6:
            pytest.skip("this machine has no address but loopback: nothing to report")

        def want(*listeners):
            return sorted(({"node": "jgnode", "host": a, "port": p}
                           for p, addrs in listeners for a in addrs),
                          key=lambda d: (d["port"], d["host"]))
        # 0.0.0.0:a at every IPv4 address of the node (not 127.0.0.1, not the loopback one).
        want1 = want((ports()[0], v4))
        wait_for(lambda: sorted(dests() or [], key=lambda d: (d["port"], d["host"])) == want1,
                 10, what=f"the destinations to be {want1}")
        wait_for(lambda: len(ports()) == 2, 30, what="the job's second listener")
        # [::]:b at every address (dual stack), replacing the first report.
        want2 = want((ports()[0], v4), (ports()[1], v4 + v6))
        wait_for(lambda: sorted(dests(), key=lambda d: (d["port"], d["host"])) == want2, 10,
                 what=f"the destinations {want2}")
        assert outsider.getsockname()[1] not in [d["port"] for d in dests()]
        table = gw.cli("jobs").stdout.decode()
        assert re.search(rf"^{job}\s+{USER}\s+jgnode\s+running\s+\S*:{ports()[0]}", table,
                         re.M), table
        assert f"job ready job={job} node=jgnode destinations={len(want2)}" in \
            gw.log_path.read_text()
    finally:
        c.run(SCANCEL, job)
        outsider.close()
    wait_for(lambda: [j for j in json.loads(gw.cli("jobs", "--json").stdout)
                      if j["job"] == job and j["state"] == "ended" and not j["destinations"]],
             10, what="the job to end with no destinations")


def test_without_the_plugin_a_job_id_is_checked_with_the_scheduler(slurm_cluster):
    """A job without --jobgate runs `jobgate run -g` (MUNGE proves the user): its hello names
    SLURM_JOB_ID, the gateway asks squeue, the route carries the job's id, and the reaper ends
    it when the job is cancelled (no epilog call: the job has no jobgate directory)."""
    c = slurm_cluster
    gw = c.gateway
    uid, _ = cluster_user(USER)
    ca = c.out_dir / "gateway-ca.crt"
    ca.write_bytes((gw.state_dir / "tls.crt").read_bytes())
    job = c.sbatch(USER, f"--export=ALL,JOBGATE_MUNGE_SOCKET={c.munged.socket}", "--wrap",
                   f"exec {JOBGATE} run --json -n plain -g https://localhost:{gw.port} "
                   f"--ca {ca} -- {PY} {HTTPAPP} --unix {{socket}}")
    ev = wait_ready_in(c, job)
    route = [r for r in gw.ls_json() if r["alias"] == ev["alias"]]
    assert route and route[0]["job"] == job and route[0]["uid"] == uid, route
    assert f"job adopt job={job} uid={uid} user={USER}" in gw.log_path.read_text()
    s = gw.login(ev["alias"], ev["link"])
    assert s.get("/hello").status == 200
    c.run(SCANCEL, job)
    # The agent removes its route as it is stopped; the job's record ends by the scheduler.
    wait_for(lambda: not [r for r in gw.ls_json() if r["alias"] == ev["alias"]], 15,
             what="the job's route to go")
    assert s.get("/hello").status == 404
    wait_for(lambda: re.search(rf"job end job={job} .*\(the scheduler says [A-Z_]+\)",
                               gw.log_path.read_text()), 15, what="the reaper to end the job")


def test_jobgate_jobs_shows_queued_running_and_ended_jobs(slurm_cluster):
    """The scheduler's word in `jobgate jobs`: a job held in the queue is "queued" before it
    starts; a --jobgate job is "running", then "ended"."""
    c = slurm_cluster
    gw = c.gateway
    held = c.sbatch(USER, "--hold", "--wrap", "true")
    job = c.sbatch(USER, "--jobgate", "--wrap", "sleep 60")

    def state(j):
        js = [x for x in json.loads(gw.cli("jobs", "--json").stdout) if x["job"] == j]
        return js[0]["state"] if js else None
    try:
        wait_for(lambda: state(held) == "queued", 10, what="the held job to show as queued")
        wait_for(lambda: state(job) == "running", 30, what="the --jobgate job to run")
        table = gw.cli("jobs").stdout.decode()
        assert re.search(rf"^{held}\s+{USER}\s+-\s+queued", table, re.M), table
    finally:
        c.run(SCANCEL, held, job)
    wait_for(lambda: state(job) == "ended", 15, what="the --jobgate job to end")
    wait_for(lambda: state(held) is None, 15, what="the cancelled held job to leave the list")
