"""Per-user quotas and floods (issue 13): no local user can take what the others need.

Each test starts a shared gateway with a small quota and floods it as a user that is
neither root nor the gateway's own (setpriv), then checks that root and another user are
still served and that the flooding user gets a clear `quota` answer.
"""
import json
import os
import subprocess

import pytest

from conftest import NOBODY, PY, _finish, _gateway, as_user, control_as, need_second_user

OTHER = NOBODY - 1  # a second unprivileged uid (setpriv needs no passwd entry)

# Run as a user: opens argv[2] control connections to argv[1]; with argv[3] == "oob" each
# sends one out-of-band byte first. Prints {"open": k, "refused": [answers]} once the
# gateway had a second to answer, then holds the connections until stdin closes.
_HOLDER = r"""
import json, select, socket, sys, time
path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    if mode == "oob":
        try:
            s.send(b"x", socket.MSG_OOB)
        except OSError:
            pass  # refused and closed already: the answer is still there to read
    socks.append(s)
time.sleep(1.0)
refused, open_ = [], 0
for s in socks:
    r, _, _ = select.select([s], [], [], 0)
    if r:
        data = s.recv(4096)
        refused.append(json.loads(data) if data else None)
    else:
        open_ += 1
print(json.dumps({"open": open_, "refused": refused}), flush=True)
sys.stdin.read()
"""


class Holder:
    """n control connections held open by uid, until close()."""

    def __init__(self, uid, path, n, mode="oob"):
        self.p = subprocess.Popen([*as_user(uid), PY, "-c", _HOLDER, str(path), str(n), mode],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        assert line, "the holder script failed"
        self.result = json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


@pytest.fixture(scope="module")
def qgw(binaries):
    need_second_user("control clients")
    gw = _gateway({"quota": {"control_clients": 4}}, name="quota")
    os.chmod(gw.root, 0o711)  # other users reach the control socket
    yield gw
    _finish(gw)


_OOB_THEN_HELLO = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.send(b"\n", socket.MSG_OOB)
time.sleep(0.3)
s.sendall(b'{"op":"hello"}\n')
s.settimeout(5)
f = s.makefile("rb")
try:
    print(json.dumps([json.loads(f.readline()), json.loads(f.readline())]))
except (OSError, ValueError) as e:
    print(json.dumps({"no_answer": str(e)}))
"""


def test_out_of_band_byte_does_not_wedge_a_control_client(qgw):
    """An out-of-band byte first used to leave the first-read event unarmed for good (a
    slot held for ever, no answer to what follows). Now it reads as a bad line."""
    p = subprocess.run([*as_user(NOBODY), PY, "-c", _OOB_THEN_HELLO, str(qgw.control_path)],
                       capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    out = json.loads(p.stdout)
    assert isinstance(out, list), f"the gateway never answered after an out-of-band byte: {out}"
    assert out[0]["ok"] is False and out[0]["code"] == "invalid", out
    assert out[1]["ok"] is True, out


def test_control_clients_per_user_are_capped(qgw):
    """One user's idle connections stop at its quota with a clear answer; root and another
    user are still served while they are held."""
    h = Holder(NOBODY, qgw.control_path, 7)
    try:
        assert h.result["open"] == 4, h.result
        assert len(h.result["refused"]) == 3, h.result
        for ans in h.result["refused"]:
            assert ans["ok"] is False and ans["code"] == "quota", ans
            assert "control_clients" in ans["error"], ans
        assert qgw.control({"op": "hello"})["ok"] is True  # root (the test) is outside it
        out = control_as(OTHER, qgw.control_path, [{"op": "list"}])
        assert isinstance(out, list) and out[0]["ok"] is True, out
        out = control_as(NOBODY, qgw.control_path, [{"op": "list"}])
        assert out == [None] or out[0]["code"] == "quota", out
        log = qgw.log_path.read_text()
        assert f"control: refused uid={NOBODY}" in log
    finally:
        h.close()
    # The slots come back with the connections.
    out = control_as(NOBODY, qgw.control_path, [{"op": "list"}])
    assert isinstance(out, list) and out[0]["ok"] is True, out


def test_root_keeps_a_reserve_when_every_slot_is_taken(binaries):
    """With the quota as large as the total (512), one user fills the gateway; root, outside
    the quota, still gets its answer from the reserve."""
    need_second_user("control clients")
    gw = _gateway({"quota": {"control_clients": 512}}, name="quota512")
    os.chmod(gw.root, 0o711)
    try:
        h = Holder(NOBODY, gw.control_path, 520, mode="idle")
        try:
            assert h.result["open"] == 512, {**h.result, "refused": h.result["refused"][:2]}
            assert len(h.result["refused"]) == 8
            assert all(a and a["code"] == "quota" for a in h.result["refused"]), \
                h.result["refused"][:2]
            r = gw.cli("ls")
            assert r.returncode == 0, r
            out = control_as(OTHER, gw.control_path, [{"op": "list"}])
            assert out == [None] or out[0]["code"] == "quota", out
        finally:
            h.close()
    finally:
        _finish(gw)
