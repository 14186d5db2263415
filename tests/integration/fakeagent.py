"""A test agent in Python (Debian's python3-h2): the agent's half of the tunnel protocol
(docs/tunnel-protocol.md), small enough to bend. Tests use it to drive jobgated's tunnel.c
alone — correct exchanges and hostile ones (bad credentials, malformed control messages,
unknown streams) — before and besides the real agent (src/agent/tunnel_*.c).

It runs its loop on a thread: TLS client with ALPN jobgate/1 (or any socket given), HTTP/2
server (the roles are reversed), the control stream as NDJSON, and CONNECT streams pumped to
a local UNIX socket or TCP port per `local` name.
"""
import hashlib
import json
import select
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


class Nonce(str):
    """The challenge's nonce, knowing the gateway it came from: .gateway is the SHA-256 (hex)
    of the gateway's TLS certificate, to which a MUNGE hello is bound (src/lib/jobcert.h)."""
    gateway = ""


def munge_payload(nonce, gateway=None):
    """What a MUNGE credential in the hello must carry."""
    return f"jobgate/1 hello {nonce} {nonce.gateway if gateway is None else gateway}"


def _readable(socks, timeout):
    """select()'s readable list, with poll(): a process with a thousand agents (the bench's
    scenario I) has descriptors beyond select()'s 1024."""
    p = select.poll()
    by_fd = {}
    for s in socks:
        by_fd[s.fileno()] = s
        p.register(s, select.POLLIN)
    return [by_fd[fd] for fd, ev in p.poll(timeout * 1000) if fd in by_fd]


class FakeAgent:
    def __init__(self, port=None, sock=None, targets=None, auth=None, host="127.0.0.1",
                 hello_extra=None):
        """targets: {local name: unix path (str) or tcp port (int)}; auth: the hello's auth;
        hello_extra: more fields of the hello (its "job", say)."""
        self.hello_extra = dict(hello_extra or {})
        self.gateway_id = ""  # TLS: the SHA-256 of the gateway's certificate
        self.targets = dict(targets or {})
        self.auth = auth
        self.lock = threading.Lock()
        self.msgs = []          # control messages from the gateway, in order
        self.cond = threading.Condition(self.lock)
        self.streams = {}       # stream id -> {"sock": s, "out": bytearray, "eof": bool}
        self.closed = False
        self.close_reason = None
        self.ctl_id = None
        self.ctl_buf = b""
        self.auto_hello = auth is not None
        self.stall_reads = set()  # locals whose app sockets we stop reading from
        self.stop_ack = set()     # stream ids whose received data we never acknowledge
        self.received = {}        # stream id -> bytes count received from the gateway
        self.hold_connect = set() # locals whose CONNECTs we never answer (nor refuse)
        self.ctl_ack = True       # False: never acknowledge the gateway's control data
        self.ctl_pending = bytearray()  # send_ctl_queued: bytes waiting for window
        if sock is None:
            raw = socket.create_connection((host, port), timeout=10)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["jobgate/1"])
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "jobgate/1", sock.selected_alpn_protocol()
            self.gateway_id = hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()
        sock.setblocking(False)
        self.sock = sock
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1024,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 256 * 1024,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(64 * 1024 * 1024 - 65535)
        self.wake_r, self.wake_w = socket.socketpair()
        self.pending = []  # callables to run on the loop thread
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    # -- called from the test thread
    def call(self, fn):
        with self.lock:
            self.pending.append(fn)
        self.wake_w.send(b"x")

    def send_ctl(self, obj_or_bytes):
        data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else \
            (json.dumps(obj_or_bytes) + "\n").encode()
        self.call(lambda: self._send_stream(self.ctl_id, data))

    def send_ctl_queued(self, data):
        """Like send_ctl, but bytes beyond the window wait for a WINDOW_UPDATE (never dropped)."""
        self.call(lambda: self._ctl_queue(data))

    def send_ctl_frames(self, chunks):
        """Each chunk as its own DATA frame, all in one write."""
        def go():
            for c in chunks:
                self.h2.send_data(self.ctl_id, c)
            self._flush()
        self.call(go)

    def send_raw(self, data):
        self.call(lambda: self._raw(data))

    def wait_msg(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.msgs:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"no such control message; got {self.msgs}, "
                                         f"closed={self.closed} ({self.close_reason})")
                self.cond.wait(min(left, 0.2))

    def wait_type(self, typ, timeout=10):
        return self.wait_msg(lambda m: m.get("type") == typ, timeout)

    def wait_closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the gateway kept the tunnel open; got {self.msgs}")
                self.cond.wait(min(left, 0.2))
        return self.close_reason

    def register(self, name, local, alias=None, rid="r1"):
        msg = {"type": "register", "id": rid, "name": name, "local": local}
        if alias:
            msg["alias"] = alias
        self.send_ctl(msg)
        return self.wait_msg(lambda m: m.get("id") == rid)

    def close(self):
        self.call(self._shutdown)
        self.thread.join(5)

    # -- the loop thread
    def _raw(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def _flush(self):
        data = self.h2.data_to_send()
        if data:
            try:
                self._raw(data)
            except OSError as e:
                self._closed(f"send: {e}")

    def _closed(self, why):
        with self.cond:
            if not self.closed:
                self.closed = True
                self.close_reason = why
            self.cond.notify_all()

    def _shutdown(self):
        try:
            self.h2.close_connection()
            self._flush()
            self.sock.close()
        except OSError:
            pass
        for st in self.streams.values():
            if st["sock"]:
                st["sock"].close()
        self._closed("closed by the test")

    def _send_stream(self, sid, data, end=False):
        st = self.streams.get(sid)
        if sid == self.ctl_id:
            self._send_window(sid, bytearray(data), end)
            return
        if st is None:
            return
        st["out"] += data
        self._drain_out(sid)

    def _send_window(self, sid, buf, end):
        while buf:
            n = min(len(buf), self.h2.local_flow_control_window(sid),
                    self.h2.max_outbound_frame_size)
            if n <= 0:
                break
            self.h2.send_data(sid, bytes(buf[:n]))
            del buf[:n]
        if end and not buf:
            self.h2.end_stream(sid)
        self._flush()
        return buf

    def _ctl_queue(self, data):
        self.ctl_pending += data
        self.ctl_pending = self._send_window(self.ctl_id, self.ctl_pending, False)

    def _drain_out(self, sid):
        st = self.streams.get(sid)
        if not st or st["closed"]:
            return
        try:
            st["out"] = self._send_window(sid, st["out"], False)
            if st["app_eof"] and not st["out"] and not st["sent_end"]:
                st["sent_end"] = True
                self.h2.end_stream(sid)
                self._flush()
        except Exception:
            pass

    def _on_ctl_line(self, line):
        m = json.loads(line)
        with self.cond:
            self.msgs.append(m)
            self.cond.notify_all()
        if m.get("type") == "challenge" and self.auto_hello:
            nonce = Nonce(m["nonce"])
            nonce.gateway = self.gateway_id
            auth = self.auth(nonce) if callable(self.auth) else self.auth
            hello = {"type": "hello", "version": 1, "agent": "fakeagent", "node": "test",
                     "auth": auth, **self.hello_extra}
            self._send_stream(self.ctl_id, (json.dumps(hello) + "\n").encode())

    def _on_request(self, ev):
        hdrs = dict(ev.headers)
        sid = ev.stream_id
        if hdrs.get(":method") == "POST" and hdrs.get(":path") == "/jobgate/control":
            self.ctl_id = sid
            self.h2.send_headers(sid, [(":status", "200")])
            self._flush()
            return
        if hdrs.get(":method") != "CONNECT":
            self.h2.reset_stream(sid)
            self._flush()
            return
        local = hdrs.get(":authority")
        target = self.targets.get(local)
        st = {"sock": None, "out": bytearray(), "app_eof": False, "sent_end": False,
              "closed": False, "local": local}
        self.streams[sid] = st
        if local in self.hold_connect:
            return
        if target is None:
            self.h2.send_headers(sid, [(":status", "404")], end_stream=True)
            self._flush()
            return
        try:
            if isinstance(target, int):
                s = socket.create_connection(("127.0.0.1", target), timeout=5)
            else:
                s = socket.socket(socket.AF_UNIX)
                s.connect(target)
            s.setblocking(False)
        except OSError:
            self.h2.send_headers(sid, [(":status", "502")], end_stream=True)
            self._flush()
            return
        st["sock"] = s
        self.h2.send_headers(sid, [(":status", "200")])
        self._flush()

    def _handle(self, events):
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                if sid == self.ctl_id:
                    if self.ctl_ack:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
                    self.ctl_buf += ev.data
                    while b"\n" in self.ctl_buf:
                        line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
                        self._on_ctl_line(line)
                    continue
                self.received[sid] = self.received.get(sid, 0) + len(ev.data)
                st = self.streams.get(sid)
                if st and st["sock"]:
                    st["sock"].setblocking(True)
                    try:
                        st["sock"].sendall(ev.data)
                    except OSError:
                        pass
                    st["sock"].setblocking(False)
                if sid not in self.stop_ack:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st and st["sock"]:
                    try:
                        st["sock"].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
            elif isinstance(ev, h2.events.StreamReset):
                st = self.streams.get(ev.stream_id)
                if st:
                    st["closed"] = True
                    if st["sock"]:
                        st["sock"].close()
                        st["sock"] = None
            elif isinstance(ev, h2.events.WindowUpdated):
                for sid in list(self.streams):
                    self._drain_out(sid)
                if self.ctl_id and self.ctl_pending:
                    self.ctl_pending = self._send_window(self.ctl_id, self.ctl_pending, False)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._closed(f"GOAWAY {ev.error_code}")
        self._flush()

    def _loop(self):
        try:
            while not self.closed:
                rl = [self.sock, self.wake_r]
                for sid, st in self.streams.items():
                    if st["sock"] and not st["app_eof"] and not st["closed"] and \
                            st["local"] not in self.stall_reads and len(st["out"]) < 256 * 1024:
                        rl.append(st["sock"])
                r = _readable(rl, 0.2)
                if self.wake_r in r:
                    self.wake_r.recv(4096)
                    with self.lock:
                        todo, self.pending = self.pending, []
                    for fn in todo:
                        fn()
                    if self.closed:
                        return
                if self.sock in r or (hasattr(self.sock, "pending") and self.sock.pending()):
                    try:
                        data = self.sock.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        data = None
                    except OSError as e:
                        self._closed(f"recv: {e}")
                        return
                    if data == b"":
                        self._closed("EOF from the gateway")
                        return
                    if data:
                        try:
                            self._handle(self.h2.receive_data(data))
                        except Exception as e:  # a protocol error from the gateway
                            self._closed(f"h2: {e!r}")
                            return
                for sid, st in list(self.streams.items()):
                    if st["sock"] in r:
                        try:
                            data = st["sock"].recv(65536)
                        except (BlockingIOError, OSError):
                            continue
                        if not data:
                            st["app_eof"] = True
                        else:
                            st["out"] += data
                        self._drain_out(sid)
        except Exception as e:
            self._closed(f"loop: {e!r}")
