"""`make demo`: builds, starts a personal gateway and the demo app, prints a link that
a client can follow through redeem to the app's page; Ctrl-C stops both."""
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import REPO, TAG, kill_group, mkdtemp, spawn, tcp_connectable, wait_for


def test_make_demo_link_reaches_app(binaries):
    if tcp_connectable(8443):
        pytest.fail("port 8443 is busy: make demo's personal gateway needs it")
    root = mkdtemp("jg-demo-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JOBGATE_", "MAKE"))}
    env.update(HOME=str(root), XDG_STATE_HOME=str(root / "state"),
               XDG_RUNTIME_DIR=str(root / "run"), JOBGATE_TEST_TAG=TAG)
    (root / "run").mkdir(mode=0o700)
    out = open(root / "demo.out", "wb")
    p = spawn(["make", "-s", "demo"], env=env, cwd=str(REPO), stdin=subprocess.DEVNULL,
              stdout=out, stderr=subprocess.STDOUT)
    try:
        def link():
            m = re.search(rb"https://[a-z0-9-]+\.localhost:8443/_jobgate/redeem/[A-Za-z0-9_-]{43}",
                          (root / "demo.out").read_bytes())
            return m and m.group(0).decode()
        wait_for(lambda: link() or p.poll() is not None, 120, what="make demo to print a link")
        url = link()
        assert url, f"make demo printed no link:\n{(root / 'demo.out').read_text()}"
        jar = root / "cookies"
        page = subprocess.run(["curl", "-skL", "-c", str(jar), "-b", str(jar), url],
                              capture_output=True, timeout=30)
        assert b"Hello from your job" in page.stdout, page.stdout[:500]
        # The link was used up by that visit.
        again = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url],
                               capture_output=True, timeout=30)
        assert again.stdout == b"403"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                pass
        kill_group(p)
        out.close()
    # Ctrl-C stopped the gateway that make demo started.
    deadline = time.monotonic() + 10
    while tcp_connectable(8443) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tcp_connectable(8443), "the demo gateway still listens after Ctrl-C"
