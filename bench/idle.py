"""Scenario I (docs/policy.md), jobgate only: what idle apps cost the gateway under each
connection policy, and what polling costs the first request.

- N idle apps, one agent each (as N jobs on N nodes would have), whose agents hold their
  tunnels open (persistent, the default policy), then whose agents let them sleep (poll): the
  growth of jobgated's RSS and of its open descriptors, per app. The agents are the tests'
  Python agent (tests/integration/fakeagent.py, python3-h2) in this process: N real `jobgate
  run`s would measure the machine, not the gateway.
- One real `jobgate run --policy "keepalive(1) poll(P)"`: the first request after its tunnel
  went to sleep, sent at a random moment of the poll interval, waits for the next poll; its
  latency next to P and to a request while the tunnel is open.

bench.py calls scenario_I(h, B) with itself as B (its helpers and BenchError).
"""
import json
import os
import random
import statistics
import subprocess
import sys
import time


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _routes(B, gw):
    return B.control(gw.ctl, [{"op": "list"}], 60)[0].get("routes", [])


def _fleet(B, h, gw, n, policy):
    """n agents, each with one app registered; with policy, each says "sleep" and goes."""
    sys.path.insert(0, os.path.join(B.REPO, "tests", "integration"))
    from fakeagent import FakeAgent
    with open(os.path.join(gw.dir, "state", "jobgate", "agent.token")) as f:
        token = f.read().strip()
    agents = []

    def one(i):
        a = FakeAgent(port=gw.port, targets={f"a{i}": h.app_sock},
                      auth={"method": "token", "token": token},
                      hello_extra={"policy": policy} if policy else {})
        agents.append(a)
        a.wait_type("welcome", 60)
        m = a.register(f"idle{i}", f"a{i}", rid=f"r{i}")
        if m.get("type") != "registered":
            raise B.BenchError(f"I: agent {i} was not registered: {m}")
        return a
    try:
        for i in range(n):
            a = one(i)
            if policy:
                # One at a time, as agents of many jobs fall asleep: the gateway's memory is
                # then that of n sleeping apps, not of n tunnels that were open at once.
                a.send_ctl({"type": "sleep"})
                a.close()  # as the real agent: "sleep", then its end of the connection
        if policy:
            B.wait_until(lambda: sum(r.get("state") == "asleep" for r in _routes(B, gw)) == n,
                         60, "every app asleep", gw.proc, h.logf(gw.name))
        else:
            B.wait_until(lambda: sum(r.get("reach") == "tunnel" for r in _routes(B, gw)) == n,
                         60, "every app on its tunnel", gw.proc, h.logf(gw.name))
    except BaseException:
        for a in agents:
            a.close()
        raise
    return agents


def _idle(B, h, n, mode):
    gw = B.Jobgated(h, f"jobgated-idle-{mode}")
    gw.start()
    try:
        pid = gw.proc.pid
        time.sleep(0.5)
        rss0, fd0 = B.status_kb([pid], "VmRSS"), _fds(pid)
        policy = None if mode == "persistent" else {
            "reconnect": True, "callback": False, "poll": 60, "sleeps": True, "keepalive": 1,
            "checkin": 60}
        agents = _fleet(B, h, gw, n, policy)
        time.sleep(1)
        rss1, fd1 = B.status_kb([pid], "VmRSS"), _fds(pid)
        tunnels = sum(1 for a in agents if not a.closed)
        for a in agents:
            a.close()
        return {"apps": n, "tunnels_open": tunnels, "rss_mib": (rss1 - rss0) / 1024,
                "kib_per_app": (rss1 - rss0) / n, "fds": fd1 - fd0, "fds_per_app": (fd1 - fd0) / n}
    finally:
        gw.stop()


def _curl(gw, alias, cookie):
    host = f"{alias}.localhost"
    r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-m", "120", "-w", "%{http_code} %{time_total}",
                        "--resolve", f"{host}:{gw.port}:127.0.0.1", "-H", f"Cookie: {cookie}",
                        f"https://{host}:{gw.port}/"], capture_output=True, text=True, timeout=130)
    code, secs = r.stdout.split()
    return int(code), float(secs)


def _first_request(B, h, poll, samples):
    gw = B.Jobgated(h, "jobgated-poll")
    gw.start()
    out = h.path("poller.out")
    try:
        with open(out, "wb") as o:
            agent = h.procs.spawn(
                [h.jobgate, "run", "--json", "--tcp", "-n", "poller", "-g",
                 f"https://127.0.0.1:{gw.port}", "--ca", gw.cert,
                 "--policy", f"keepalive(1) poll({poll})", "--",
                 "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
                h.logf("poller"), env=gw.env, stdout=o)
        ready = {}

        def is_ready():
            with open(out) as f:
                for ln in f:
                    try:
                        ev = json.loads(ln)
                    except ValueError:
                        continue
                    if ev.get("event") == "ready":
                        ready.update(ev)
                        return True
            return False
        B.wait_until(is_ready, 60, "the polling agent's app", agent, h.logf("poller"))
        cookie = gw.redeem(ready["alias"], ready["link"])
        code, open_s = _curl(gw, ready["alias"], cookie)
        if code != 200:
            raise B.BenchError(f"I: a request through the open tunnel got {code}")

        def asleep():
            return any(r["alias"] == ready["alias"] and r.get("state") == "asleep"
                       for r in _routes(B, gw))
        lat, waits = [], []
        for _ in range(samples):
            B.wait_until(asleep, 30, "the tunnel to sleep", agent, h.logf("poller"))
            waits.append(random.uniform(0, poll))
            time.sleep(waits[-1])
            code, secs = _curl(gw, ready["alias"], cookie)
            if code != 200:
                raise B.BenchError(f"I: the first request to the sleeping app got {code}")
            lat.append(secs)
        B.log(f"I: first requests {lat} s after waiting {waits} s into the sleep")
        h.procs.stop(agent)
        return {"poll_s": poll, "samples": samples, "open_ms": open_s * 1000,
                "first_median_s": statistics.median(lat), "first_max_s": max(lat)}
    finally:
        gw.stop()


def scenario_I(h, B):
    a = h.args
    res = {"persistent": _idle(B, h, a.idle_apps, "persistent"),
           "poll": _idle(B, h, a.idle_apps, "poll"),
           "first": _first_request(B, h, a.poll_seconds, a.poll_samples)}
    B.log(f"I: {res}")
    return res


def report(res):
    p, q, f = res["persistent"], res["poll"], res["first"]
    return ["", f"## I — {p['apps']:,} idle apps by connection policy (jobgate only)", "",
            "Each app with an agent of its own (as many jobs on many nodes); jobgated's growth "
            "once they are registered and idle.", "",
            "| policy | tunnels open | RSS growth | per app | descriptors | per app |",
            "|---|---:|---:|---:|---:|---:|",
            f"| persistent (`keepalive reconnect`) | {p['tunnels_open']:,} | {p['rss_mib']:.1f} MiB | "
            f"{p['kib_per_app']:.1f} KiB | {p['fds']:,} | {p['fds_per_app']:.2f} |",
            f"| poll (`keepalive(1) reconnect poll(60)`, asleep) | 0 | {q['rss_mib']:.1f} MiB | "
            f"{q['kib_per_app']:.1f} KiB | {q['fds']:,} | {q['fds_per_app']:.2f} |",
            "",
            f"The first request to a polling app (`keepalive(1) poll({f['poll_s']})`), sent at a "
            f"random moment after its tunnel went to sleep, {f['samples']} times: median "
            f"{f['first_median_s']:.2f} s, at most {f['first_max_s']:.2f} s, for a poll interval "
            f"of {f['poll_s']} s (it waits for the next poll: half the interval on average, the "
            f"whole at worst, plus 10 % of jitter; a request while the tunnel is open: "
            f"{f['open_ms']:.1f} ms)."]
