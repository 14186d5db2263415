"""A fake jobgate gateway for the agent's tunnel tests (docs/tunnel-protocol.md).

It plays the gateway's side of the tunnel with Debian's python3-h2 as the HTTP/2
*client* (the roles are reversed: the agent is the HTTP/2 server):

- `FakeGateway`: a TLS server on 127.0.0.1 (certificate from `make_cert`, ALPN
  "jobgate/1" or whatever the test asks for). Each accepted connection becomes a `GwConn`.
- `FakeControl`: a fake jobgated control socket that takes `{"op":"tunnel"}` with two fds
  (SCM_RIGHTS), as `jobgate tunnel --stdio` sends them, and runs a `GwConn` on them.
- `GwConn`: opens the control stream, sends the challenge, records the hello (and every
  byte the agent sent, decrypted, in `raw`), answers with a welcome or the error the test
  chose, answers register with a made-up alias/url/link, records unregister; opens CONNECT
  streams on demand (`open_connect`), can stall a stream (no WINDOW_UPDATE), drop the
  connection, send GOAWAY, or freeze (neither read nor write, to test PING timeouts).

All socket I/O of a connection happens on its own thread; the test's calls are run there
through a queue (`GwConn.call`), since neither h2 nor an SSL socket is thread-safe.
"""
import contextlib
import hashlib
import json
import os
import queue
import secrets
import select
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

KiB = 1024
MiB = 1 << 20
STREAM_WINDOW = 256 * KiB


def make_cert(directory, name="gw", cn="localhost", san="DNS:localhost,IP:127.0.0.1"):
    """A self-signed P-256 certificate; returns (crt, key) paths."""
    crt, key = f"{directory}/{name}.crt", f"{directory}/{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    return crt, key


def unmunge(sock_path, credential):
    """Decodes a MUNGE credential through munged at sock_path, as the gateway would:
    returns {"uid": int, "payload": bytes, "replay_refused": bool}."""
    def run(*extra):
        return subprocess.run(["unmunge", "--socket", sock_path, "--numeric", *extra],
                              input=credential.encode(), capture_output=True, timeout=10)
    p = run("--keys", "UID")
    if p.returncode != 0:
        raise AssertionError(f"unmunge failed: {p.stderr.decode(errors='replace')}")
    head, _, payload = p.stdout.partition(b"\n\n")
    uid = None
    for line in head.decode().splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "UID":
            uid = int(v.strip())
    # A second decode is a replay: munged must refuse it.
    replay = run("--no-output")
    return {"uid": uid, "payload": payload, "replay_refused": replay.returncode != 0}


class Stream:
    """A CONNECT stream opened by the fake gateway."""

    def __init__(self, conn, sid, authority):
        self.conn, self.sid, self.authority = conn, sid, authority
        self.status = None
        self.data = bytearray()
        self.ended = False
        self.reset = None          # RST_STREAM error code from the agent
        self.stalled = False
        self.unacked = 0           # bytes received and not handed back (flow control)
        self.received_while_stalled = 0
        self.out = bytearray()     # bytes waiting for the agent's window
        self.sent = 0              # bytes sent as DATA
        self.out_end = False

    # -- called from the test's thread
    def wait(self, pred, timeout=10, what="stream condition"):
        deadline = time.monotonic() + timeout
        with self.conn.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"stream {self.sid} ({self.authority}): timed out waiting for {what}; "
                        f"status={self.status} ended={self.ended} reset={self.reset} "
                        f"got {len(self.data)} bytes: {bytes(self.data[:200])!r}")
                self.conn.cond.wait(min(left, 0.2))

    def wait_status(self, timeout=10):
        self.wait(lambda: self.status is not None or self.reset is not None
                  or self.conn.closed, timeout, "the response")
        return self.status

    def send(self, data, end=False):
        self.conn.call(lambda: self._queue(bytes(data), end))

    def end(self):
        self.conn.call(lambda: self._queue(b"", True))

    def stall(self):
        self.conn.call(lambda: setattr(self, "stalled", True))

    def resume(self):
        def go():
            self.stalled = False
            if self.unacked:
                self.conn.h2.acknowledge_received_data(self.unacked, self.sid)
                self.unacked = 0
        self.conn.call(go)

    def read_http_response(self, timeout=20):
        """Waits for one HTTP/1.1 response with Content-Length; returns (head, body)."""
        def have_head():
            return b"\r\n\r\n" in self.data or self.ended or self.reset is not None
        self.wait(have_head, timeout, "an HTTP response head")
        i = bytes(self.data).find(b"\r\n\r\n")
        assert i >= 0, f"no HTTP head in {bytes(self.data[:300])!r}"
        head = bytes(self.data[:i]).decode("latin-1")
        n = 0
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                n = int(v.strip())
        self.wait(lambda: len(self.data) >= i + 4 + n or self.ended or self.reset is not None,
                  timeout, f"{n} body bytes")
        body = bytes(self.data[i + 4: i + 4 + n])
        assert len(body) == n, f"body cut short: {len(body)} of {n}"
        with self.conn.cond:
            del self.data[: i + 4 + n]
        return head, body

    # -- on the connection's thread
    def _queue(self, data, end):
        self.out += data
        self.out_end = self.out_end or end
        self._pump()

    def _pump(self):
        h = self.conn.h2
        if self.reset is not None or self.conn.closed:
            return
        while self.out:
            n = min(len(self.out), h.local_flow_control_window(self.sid),
                    h.max_outbound_frame_size)
            if n <= 0:
                return
            h.send_data(self.sid, bytes(self.out[:n]))
            del self.out[:n]
            self.sent += n
        if self.out_end:
            self.out_end = False
            h.end_stream(self.sid)


class _TLSTransport:
    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def pending(self):
        return self.sock.pending()

    def recv(self):
        try:
            return self.sock.recv(256 * KiB)
        except (ssl.SSLWantReadError, BlockingIOError):
            return None

    def sendall(self, b):
        self.sock.sendall(b)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class _FdTransport:
    """The two descriptors handed over by `jobgate tunnel --stdio` (its stdin and stdout)."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd

    def fileno(self):
        return self.rfd

    def pending(self):
        return 0

    def recv(self):
        try:
            return os.read(self.rfd, 256 * KiB)
        except BlockingIOError:
            return None

    def sendall(self, b):
        view = memoryview(b)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def close(self):
        for fd in {self.rfd, self.wfd}:
            with contextlib.suppress(OSError):
                os.close(fd)


class GwConn:
    """One tunnel connection, seen from the gateway."""

    def __init__(self, gw, transport, peer=None):
        self.gw, self.t, self.peer = gw, transport, peer
        self.cond = threading.Condition(threading.RLock())
        self.raw = bytearray()          # every byte the agent sent (after TLS)
        self.messages = []              # control messages from the agent, in order
        self.hello = None
        self.nonce = secrets.token_urlsafe(32)
        assert len(self.nonce) == 43
        self.munge = None               # (payload, replay refused) when the gateway decoded one
        self.registers, self.unregisters = [], []
        self.aliases = {}               # local -> alias given
        self.streams = {}
        self.agent_settings = {}
        self.goaway = None              # (error code, debug data) of the agent's GOAWAY
        self.closed = False
        self.frozen = False
        self.pings_acked = 0
        self.error = None
        self.ctl_buf = b""
        self._calls = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * KiB,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- test side
    def call(self, fn, timeout=10):
        """Runs fn on the connection's thread and returns its result."""
        if self.closed:
            raise AssertionError("the tunnel connection is closed")
        box = queue.Queue()
        self._calls.put((fn, box))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        try:
            ok, v = box.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the fake gateway's connection thread did not respond")
        if not ok:
            raise v
        return v

    def wait(self, pred, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake gateway: timed out after {timeout} s waiting for "
                                         f"{what}; messages so far: {self.messages!r}; "
                                         f"closed={self.closed} error={self.error}")
                self.cond.wait(min(left, 0.2))

    def wait_registered(self, n=1, timeout=15):
        self.wait(lambda: len([m for m in self.registers if "answered" in m]) >= n, timeout,
                  f"{n} registration(s)")
        return self.registers[n - 1]

    def open_connect(self, authority):
        def go():
            sid = self.h2.get_next_available_stream_id()
            st = Stream(self, sid, authority)
            self.streams[sid] = st
            self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
            return st
        return self.call(go)

    def send_goaway(self, code=0, data=b"restart"):
        self.call(lambda: self.h2.close_connection(error_code=code, additional_data=data))

    def send_control(self, obj_or_bytes):
        def go():
            b = obj_or_bytes if isinstance(obj_or_bytes, bytes) else \
                json.dumps(obj_or_bytes).encode() + b"\n"
            step = self.h2.max_outbound_frame_size
            for i in range(0, len(b), step):
                self.h2.send_data(self.ctl_sid, b[i:i + step])
        self.call(go)

    def drop(self):
        """Closes the TCP connection at once (no GOAWAY)."""
        def go():
            self._close("dropped by the test")
        with contextlib.suppress(AssertionError):
            self.call(go)

    def freeze(self):
        """Stops reading and writing; the connection stays open."""
        self.call(lambda: setattr(self, "frozen", True))

    # -- connection thread
    def _close(self, why):
        if self.closed:
            return
        with self.cond:
            self.closed = True
            self.error = self.error or why
            self.cond.notify_all()
        self.t.close()
        self._wake_r.close()
        self._wake_w.close()

    def _flush(self):
        out = self.h2.data_to_send()
        if out:
            self.t.sendall(out)

    def _start(self):
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(64 * MiB - 65535)
        self.ctl_sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self.ctl_sid, [
            (":method", "POST"), (":scheme", "https"), (":authority", "jobgate"),
            (":path", "/jobgate/control"), ("content-type", "application/x-ndjson")])
        challenge = self.gw.challenge(self) if self.gw.challenge else \
            {"type": "challenge", "version": 1, "nonce": self.nonce}
        self.h2.send_data(self.ctl_sid, json.dumps(challenge).encode() + b"\n")
        self._flush()

    def _run(self):
        try:
            self._start()
            while not self.closed:
                if self.frozen:
                    while True:
                        try:
                            fn, box = self._calls.get(timeout=0.1)
                        except queue.Empty:
                            if self.closed:
                                return
                            continue
                        self._do_call(fn, box)
                        if self.closed:
                            return
                r = [self.t, self._wake_r]
                ready = [self.t] if self.t.pending() else select.select(r, [], [], 0.2)[0]
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                while True:
                    try:
                        fn, box = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    self._do_call(fn, box)
                    if self.closed or self.frozen:
                        break
                if self.closed or self.frozen:
                    continue
                if self.t in ready:
                    data = self.t.recv()
                    if data is None:
                        continue
                    if not data:
                        self._close("the agent closed the connection")
                        break
                    with self.cond:
                        self.raw += data
                        events = self.h2.receive_data(data)
                        for ev in events:
                            self._event(ev)
                        self.cond.notify_all()
                    self._flush()
        except Exception as e:  # noqa: BLE001 - recorded for the test to see
            with self.cond:
                self.error = f"{type(e).__name__}: {e}"
            self._close(self.error)
        finally:
            with self.cond:
                self.cond.notify_all()
            # What the agent is still waiting for in call() must not hang the test.
            while True:
                try:
                    _, box = self._calls.get_nowait()
                except queue.Empty:
                    break
                box.put((False, AssertionError("connection closed")))

    def _do_call(self, fn, box):
        try:
            with self.cond:
                v = fn()
                self.cond.notify_all()
            if not self.closed and not self.frozen:
                self._flush()
            box.put((True, v))
        except Exception as e:  # noqa: BLE001
            box.put((False, e))

    def _event(self, ev):
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.agent_settings[int(k)] = v.new_value
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            status = dict(ev.headers).get(":status")
            if st:
                st.status = int(status)
            elif ev.stream_id == self.ctl_sid:
                self.ctl_status = int(status)
        elif isinstance(ev, h2.events.DataReceived):
            n = ev.flow_controlled_length
            if ev.stream_id == self.ctl_sid:
                self.h2.acknowledge_received_data(n, ev.stream_id)
                self._control_bytes(ev.data)
                return
            st = self.streams.get(ev.stream_id)
            if st is None:
                self.h2.acknowledge_received_data(n, ev.stream_id)
                return
            st.data += ev.data
            if st.stalled:
                st.unacked += n
                st.received_while_stalled += len(ev.data)
            else:
                self.h2.acknowledge_received_data(n, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st:
                st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st:
                st.reset = int(ev.error_code)
        elif isinstance(ev, h2.events.WindowUpdated):
            for st in list(self.streams.values()):
                if ev.stream_id in (0, st.sid):
                    st._pump()
        elif isinstance(ev, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.additional_data)

    def _control_bytes(self, data):
        self.ctl_buf += data
        if len(self.ctl_buf) > 64 * KiB and b"\n" not in self.ctl_buf:
            raise AssertionError("agent sent a control line over 64 KiB")
        while b"\n" in self.ctl_buf:
            line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
            msg = json.loads(line)
            self.messages.append(msg)
            self._control(msg)

    def _reply(self, obj):
        self.h2.send_data(self.ctl_sid, json.dumps(obj).encode() + b"\n")

    def _control(self, msg):
        t = msg.get("type")
        if t == "hello":
            self.hello = msg
            auth = msg.get("auth", {})
            if auth.get("method") == "munge" and self.gw.munge_socket:
                self.munge = unmunge(self.gw.munge_socket, auth["credential"])
            ans = self.gw.hello_reply(self, msg) if self.gw.hello_reply else \
                {"type": "welcome", "uid": os.getuid(), "user": "tester", "tunnel": "t1"}
            self._reply(ans)
            if ans.get("type") == "error":
                self.h2.close_connection(error_code=0, additional_data=b"auth")
        elif t == "register":
            entry = dict(msg)
            self.registers.append(entry)
            ans = self.gw.register_reply(self, msg) if self.gw.register_reply else None
            if ans is None:
                alias = msg.get("alias") or self.gw.new_alias()
                url = f"https://{alias}.fake.test/"
                ans = {"type": "registered", "id": msg["id"], "alias": alias, "url": url,
                       "link": url + "_jobgate/redeem/" + secrets.token_urlsafe(32),
                       "expires": int(time.time()) + 600}
            if ans == "silent":  # never answer
                return
            if ans.get("type") == "registered":
                self.aliases[msg["local"]] = ans["alias"]
            entry["answered"] = ans
            self._reply(ans)
        elif t == "unregister":
            self.unregisters.append(msg.get("alias"))


class FakeGateway:
    """A TLS listener on 127.0.0.1 that runs a GwConn per accepted connection."""

    def __init__(self, crt=None, key=None, alpn=("jobgate/1",), munge_socket=None):
        self.crt, self.key = crt, key
        self.alpn = alpn
        self.munge_socket = munge_socket
        self.hello_reply = None        # fn(conn, hello) -> welcome or error object
        self.register_reply = None     # fn(conn, msg) -> answer, None: default, "silent": none
        self.challenge = None          # fn(conn) -> challenge object
        self.conns = []
        self.cond = threading.Condition()
        self.handshake_errors = []
        self._n = 0
        self.lsock = None
        self.port = None
        self._stop = False

    def cert_sha256(self):
        """The SHA-256 (hex) of its certificate (DER): what a MUNGE hello is bound to."""
        with open(self.crt) as f:
            return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()

    def new_alias(self):
        self._n += 1
        return f"fake-alias-{self._n}-{secrets.token_hex(3)}"

    def start(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.crt, self.key)
        if self.alpn:
            self.ctx.set_alpn_protocols(list(self.alpn))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while not self._stop:
            try:
                s, peer = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(s, peer), daemon=True).start()

    def _handshake(self, s, peer):
        try:
            s.settimeout(10)
            tls = self.ctx.wrap_socket(s, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self.cond:
                self.handshake_errors.append(str(e))
                self.cond.notify_all()
            with contextlib.suppress(OSError):
                s.close()
            return
        tls.settimeout(10)
        if tls.selected_alpn_protocol() != "jobgate/1":
            # A server that does not speak the tunnel: answer nothing, close.
            with self.cond:
                self.handshake_errors.append(f"alpn {tls.selected_alpn_protocol()!r}")
                self.cond.notify_all()
            time.sleep(0.2)
            tls.close()
            return
        self.adopt(_TLSTransport(tls), peer)

    def adopt(self, transport, peer=None):
        c = GwConn(self, transport, peer)
        with self.cond:
            self.conns.append(c)
            self.cond.notify_all()
        return c

    def wait_conn(self, n=1, timeout=15):
        """The n-th connection (1-based) once it exists."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake gateway: no connection #{n} within {timeout} s "
                                         f"(have {len(self.conns)}; handshake errors: "
                                         f"{self.handshake_errors})")
                self.cond.wait(min(left, 0.2))
            return self.conns[n - 1]

    def all_raw(self):
        return b"".join(bytes(c.raw) for c in self.conns)

    def stop(self):
        self._stop = True
        if self.lsock:
            with contextlib.suppress(OSError):
                self.lsock.close()
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.drop()


class FakeControl:
    """A fake jobgated control socket for `jobgate tunnel --stdio`: takes the tunnel op with
    its two fds and, when answer is ok, speaks the tunnel on them through `gw`."""

    def __init__(self, path, gw, answer=None):
        self.path, self.gw = str(path), gw
        self.answer = answer or {"ok": True, "tunnel": "t1"}
        self.requests = []             # (line, number of fds, SO_PEERCRED uid)
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        with s:
            s.settimeout(10)
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", cred)
            msg, fds, _, _ = socket.recv_fds(s, 65536, 4)
            with self.cond:
                self.requests.append((msg, len(fds), uid))
                self.cond.notify_all()
            s.sendall(json.dumps(self.answer).encode() + b"\n")
            if self.answer.get("ok") and len(fds) == 2 and msg == b'{"op":"tunnel","version":1}\n':
                for fd in fds:
                    os.set_blocking(fd, True)
                self.gw.adopt(_FdTransport(fds[0], fds[1]))
            else:
                for fd in fds:
                    os.close(fd)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()
