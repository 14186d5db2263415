"""Jupyter end to end: Debian's jupyter-notebook started through `jobgate run` on a UNIX
socket (the command of the README), and headless Chromium (Debian's, driven by playwright-core
from tests/browser) that opens the printed link, creates a notebook the way a user does
(New -> Python 3), runs print(6*7) and sees 42. The kernel's messages travel over a
WebSocket through the gateway.

Skipped when chromium, jupyter-notebook / ipykernel, node or tests/browser/node_modules are
missing; `make check` installs them all (scripts/install-deps browser, make browser-deps).
"""
import os
import shutil
import subprocess
import uuid

import pytest

from browser import browser_jupyter, browser_missing, jupyter_in_browser, kill_marked
from conftest import PY, mkdtemp

BROWSER_TIMEOUT = 120  # the browser script's own limit; a passing run takes ~5 s


def jupyter_missing():
    for exe in ("jupyter", "jupyter-notebook"):
        if not shutil.which(exe):
            return f"{exe} not found (scripts/install-deps browser installs jupyter-notebook)"
    r = subprocess.run([PY, "-c", "import notebook, ipykernel"], capture_output=True, timeout=30)
    if r.returncode:
        return (f"{PY} cannot import notebook and ipykernel (python3-ipykernel): "
                f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return None


@pytest.fixture(scope="module", params=["local", "tunnel"])
def jupyter(gateway, request):
    """jupyter notebook under `jobgate run --json`, with a HOME, runtime and notebook
    directory of its own; ended (kernels too) afterwards. "local": through the gateway's
    control socket, as on the gateway's host; "tunnel": `jobgate run -g URL`, as on a compute
    node of the same user (the agent pins the gateway's certificate, sends its token)."""
    reason = browser_missing() or jupyter_missing()
    if reason:
        pytest.skip(reason)
    root = mkdtemp("jg-nb-")
    home, runtime, notebooks = root / "home", root / "runtime", root / "notebooks"
    for d in (home, runtime, notebooks):
        d.mkdir(mode=0o700)
    # Kernels run in sessions of their own: this marker finds any that outlive Jupyter.
    run_id = uuid.uuid4().hex
    marker = f"JG_TEST_JUPYTER={run_id}"
    cmd = ["jupyter", "notebook", "--no-browser", "--sock", "{socket}",
           "--NotebookApp.allow_remote_access=True", "--NotebookApp.token=",
           "--notebook-dir", str(notebooks)]
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    saved = gateway.env
    # HOME is Jupyter's own; XDG_STATE_HOME (the gateway's) still tells the agent where the
    # personal gateway's certificate and token are.
    gateway.env = dict(saved, HOME=str(home), JUPYTER_RUNTIME_DIR=str(runtime),
                       JG_TEST_JUPYTER=run_id)
    try:
        extra = ["-g", f"https://localhost:{gateway.port}"] if request.param == "tunnel" else []
        app = gateway.publish(cmd, wait=False, extra=extra)
    finally:
        gateway.env = saved
    try:
        app.wait_ready(timeout=90)  # Jupyter takes a second or two here, more on a busy machine
        app.notebooks = notebooks
        app.mode = request.param
        yield app
    finally:
        app.stop()  # SIGTERM: jobgate run passes it on, Jupyter shuts its kernels down
        kill_marked(marker)
        shutil.rmtree(root, ignore_errors=True)


def gateway_cert(gw):
    return gw.state_dir / "tls.crt"


@pytest.mark.timeout(BROWSER_TIMEOUT + 60)
def test_jupyter_notebook_runs_code_through_gateway(gateway, jupyter, tmp_path):
    origin = f"https://{jupyter.alias}.localhost:{gateway.port}"
    routes = gateway.control({"op": "list"})["routes"]
    backend = next(r["backend"] for r in routes if r["alias"] == jupyter.alias)
    assert backend.startswith("tunnel:" if jupyter.mode == "tunnel" else "unix:"), backend
    assert jupyter.link.startswith(f"{origin}/_jobgate/redeem/"), jupyter.link
    # The link exactly as `jobgate run` printed it, the gateway's own certificate trusted.
    res = jupyter_in_browser(jupyter.link, cert=gateway_cert(gateway), timeout=BROWSER_TIMEOUT,
                             artifacts=tmp_path / "browser")
    assert res["notebook_url"].startswith(f"{origin}/notebooks/"), res
    assert res["output"] == "42" and res["prompt"] == "In [1]:", res
    wss = origin.replace("https://", "wss://", 1)
    kernel_ws = [w for w in res["websockets"] if w["url"].startswith(f"{wss}/api/kernels/")]
    assert kernel_ws and kernel_ws[0]["received"] > 0 and kernel_ws[0]["sent"] > 0, res
    # The notebook the browser created is Jupyter's, in its notebook directory.
    name = res["notebook_url"].split("/notebooks/", 1)[1].split("?", 1)[0]
    assert (jupyter.notebooks / name).is_file(), sorted(os.listdir(jupyter.notebooks))
    gateway.assert_alive()


@pytest.mark.timeout(90)
def test_browser_check_fails_on_a_used_link(gateway, jupyter):
    """The check is real: a link already redeemed leads to jobgate's 403 page, never to
    Jupyter, and the browser run reports that rather than passing."""
    link = gateway.new_link(jupyter.alias)
    gateway.login(jupyter.alias, link)  # uses it up
    run = browser_jupyter(link, cert=gateway_cert(gateway), timeout=30)
    assert not run.ok, run.describe()
    assert run.result["steps"].get("link_status") == 403, run.describe()
    assert "did not lead to Jupyter" in run.error and "403" in run.error, run.describe()


@pytest.mark.timeout(90)
def test_browser_trusts_only_the_gateway_certificate(gateway, jupyter, tmp_path):
    """cert= pins the gateway's key: with another certificate Chromium refuses the
    connection (so the passing test did verify the gateway's certificate)."""
    other = tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "other.key"),
                    "-out", str(other), "-subj", "/CN=localhost", "-days", "1"],
                   check=True, capture_output=True, timeout=30)
    run = browser_jupyter(gateway.new_link(jupyter.alias), cert=other, timeout=30)
    assert not run.ok, run.describe()
    assert "ERR_CERT" in (run.error or ""), run.describe()
