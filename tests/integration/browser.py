"""Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core from npm, in
tests/browser) for the end-to-end tests.

    from browser import browser_missing, jupyter_in_browser
    jupyter_in_browser(link, cert=gw.state_dir / "tls.crt")   # asserts; returns the details

The browser part knows nothing about how the app was started: it gets a one-time link
(https://<alias>.<domain>:<port>/_jobgate/redeem/<token>, the port is in it) and how to trust
the gateway, so the same call works for an app published through a reverse tunnel
(`jobgate run -g URL`) as for one published locally through the control socket.

Every process started here (node, and Chromium, which playwright starts in a process group
of its own) carries a marker of its own in its environment and is killed when the call
returns, pass or fail; its HOME and TMPDIR (Chromium's temporary profile) are a temporary
directory removed afterwards.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import uuid

from conftest import REPO, kill_group, pids_marked, mkdtemp, spawn, tail, wait_for

BROWSER_DIR = REPO / "tests" / "browser"
JUPYTER_SCRIPT = BROWSER_DIR / "jupyter.mjs"
CHROMIUM = os.environ.get("JOBGATE_CHROMIUM", "/usr/bin/chromium")


def browser_missing():
    """Why the browser tests cannot run here (a message for pytest.skip), or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (scripts/install-deps browser installs Debian's chromium)"
    if not shutil.which("node"):
        return "node not found (scripts/install-deps browser installs nodejs and npm)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        return (f"playwright-core is not installed in {BROWSER_DIR}/node_modules "
                f"(run `make browser-deps`, or `npm ci` in tests/browser)")
    return None


def kill_marked(marker):
    """SIGKILL to every process marked so; returns how many there were."""
    pids = pids_marked(marker)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class BrowserRun:
    """What one run of a browser script gave: its exit status, its JSON line, its stderr."""

    def __init__(self, rc, result, stderr, artifacts):
        self.rc, self.result, self.stderr, self.artifacts = rc, result, stderr, artifacts

    @property
    def ok(self):
        return self.rc == 0 and bool(self.result.get("ok"))

    @property
    def error(self):
        return self.result.get("error")

    def describe(self):
        extra = f"; screenshots and HTML in {self.artifacts}" if self.artifacts else ""
        return (f"exit status {self.rc}: {self.error or '(no error reported)'}{extra}\n"
                f"result: {json.dumps(self.result)}\nbrowser stderr:\n{self.stderr}")


def run_browser_script(script, args, *, timeout=120, artifacts=None, wrap=()):
    """Runs `[WRAP...] node SCRIPT ARGS --timeout T [--artifacts DIR]` in tests/browser and
    returns a BrowserRun; kills node and Chromium and removes their temporary files in any
    case. wrap: a command prefix, e.g. topology.argv("outside", []) to run the browser in
    another network namespace (it must keep the environment: the marker is found there)."""
    run_id = uuid.uuid4().hex
    marker = f"JOBGATE_BROWSER_RUN={run_id}"
    tmp = mkdtemp("jg-br-")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "JOBGATE_", "DISPLAY", "WAYLAND_", "ASAN_", "UBSAN_",
                                "LD_PRELOAD"))}
    env.update(HOME=str(tmp), TMPDIR=str(tmp), XDG_CONFIG_HOME=str(tmp / "config"),
               XDG_CACHE_HOME=str(tmp / "cache"), JOBGATE_BROWSER_RUN=run_id,
               JOBGATE_CHROMIUM=CHROMIUM)
    argv = [*map(str, wrap), shutil.which("node") or "node", str(script), *map(str, args),
            "--timeout", str(timeout)]
    if artifacts is not None:
        argv += ["--artifacts", str(artifacts)]
    err_path = tmp / "stderr"
    proc = None
    try:
        with open(err_path, "wb") as err:
            proc = spawn(argv, env=env, cwd=str(BROWSER_DIR), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the browser script ran past its own timeout "
                                 f"({timeout} s + 30):\n{tail(err_path)}")
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {"error": f"no JSON result line: {lines[-1]!r}"}
        return BrowserRun(proc.returncode, result, tail(err_path, 40), artifacts)
    finally:
        if proc is not None:
            kill_group(proc, timeout=3)
        # Chromium runs in a process group of its own: find it by the marker.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: kill_marked(marker) == 0, 5, interval=0.1, what="Chromium to end")
        shutil.rmtree(tmp, ignore_errors=True)


def browser_jupyter(link, *, cert=None, ignore_https_errors=False, resolve=None, timeout=120,
                    artifacts=None, wrap=()):
    """Opens the one-time `link` of a Jupyter notebook 6 app in headless Chromium, creates a
    notebook (New -> Python 3), runs print(6*7) and reads its output. Returns a BrowserRun
    without judging it (tests of failure use this).

    cert: PEM file of the gateway's certificate (personal mode: state_dir/tls.crt); Chromium
    then accepts exactly that key. ignore_https_errors=True accepts any certificate instead.
    resolve: Chromium host-resolver rules for a domain other than localhost, e.g.
    "MAP *.login.test 10.231.1.1" (*.localhost needs none). artifacts: directory for
    screenshots and HTML on failure. wrap: see run_browser_script."""
    if cert is None and not ignore_https_errors:
        raise ValueError("give cert=PATH (the gateway's certificate) or ignore_https_errors=True")
    args = ["--link", link]
    if cert is not None:
        args += ["--cert", cert]
    else:
        args.append("--ignore-https-errors")
    if resolve:
        args += ["--resolve", resolve]
    return run_browser_script(JUPYTER_SCRIPT, args, timeout=timeout, artifacts=artifacts,
                              wrap=wrap)


def jupyter_in_browser(link, **kw):
    """browser_jupyter() that must succeed: the notebook's first cell printed exactly 42,
    over a kernel WebSocket through the link's origin. Returns the script's result (timings
    in result["steps"], the kernel WebSocket in result["websockets"])."""
    run = browser_jupyter(link, **kw)
    if not run.ok:
        raise AssertionError(f"Jupyter in Chromium through {link.split('/_jobgate/')[0]} failed, "
                             f"{run.describe()}")
    assert run.result.get("output") == "42", run.describe()
    return run.result
