#!/usr/bin/env python3
"""Abusive HBONE clients, one per HTTP/2 attack on the server's outer connection.

A mesh workload's mutual TLS (Python's ssl), then HTTP/2 frame by frame with hyperframe and
hpack (the parts of the python-h2 package that let a client break the rules h2's own state
machine would enforce): CONNECTs reset as fast as they are sent (rapid reset), a CONNECT's
header block cut into one-byte CONTINUATION frames (CONTINUATION flood), a header block left
open (slow headers), or more CONNECTs open at once than the server allows (stream stacking).
Prints what it saw as key=value lines (`goaway`, `closed`, `refused`) and `result=ok`; the
Rust test judges.

    hbone_abuse.py --addr IP:PORT --root PEM --cert PEM --key PEM --authority IP:PORT SCENARIO N
"""

import argparse
import socket
import ssl
import time

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from hbone_common import host_port, overall_deadline, say

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
PATIENCE = 40


def code_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class Raw:
    def __init__(self, args):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.root)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(host_port(args.addr), timeout=PATIENCE)
        self.sock = ctx.wrap_socket(raw, server_hostname=None)
        self.authority = args.authority
        self.encoder = hpack.Encoder()
        self.buf = b""
        self.closed = False
        self.goaway = None
        self.resets = {}
        self.settings = False
        self.send(PREFACE + SettingsFrame(0).serialize())
        # h2 applies its SETTINGS (the stream limit) once they are acknowledged.
        self.read_until(lambda: self.settings)

    def send(self, data):
        # A server that gave up on us may stop reading; what it said is still to be read.
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    def block(self, extra=()):
        return self.encoder.encode(
            [(":method", "CONNECT"), (":authority", self.authority)] + list(extra)
        )

    def connect(self, stream):
        frame = HeadersFrame(stream, self.block())
        frame.flags.add("END_HEADERS")
        return frame.serialize()

    def read_until(self, done, seconds=PATIENCE):
        deadline = time.monotonic() + seconds
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            self.buf += data
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                self.buf = self.buf[9 + length :]
                self.on_frame(frame)
        return done()

    def on_frame(self, frame):
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            self.settings = True
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            self.goaway = code_name(frame.error_code)
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = code_name(frame.error_code)

    def finish(self):
        self.read_until(lambda: False)
        say("goaway", self.goaway)
        say("closed", int(self.closed))
        say("refused", sum(1 for c in self.resets.values() if c == "REFUSED_STREAM"))


def rapid_reset(c, n):
    c.send(b"".join(c.connect(s) + RstStreamFrame(s, error_code=CANCEL).serialize()
                    for s in range(1, 2 * n, 2)))


def continuation(c, n):
    block = c.block([("x-pad", "p" * n)])
    frames = [HeadersFrame(1, block[:1])]
    frames += [ContinuationFrame(1, block[i : i + 1]) for i in range(1, len(block))]
    frames[-1].flags.add("END_HEADERS")
    c.send(b"".join(f.serialize() for f in frames))


def slow(c, _n):
    block = c.block([("x-slow", "s" * 64)])
    c.send(HeadersFrame(1, block[:8]).serialize())


def stacking(c, n):
    c.send(b"".join(c.connect(s) for s in range(1, 2 * n, 2)))


SCENARIOS = {
    "rapid-reset": rapid_reset,
    "continuation": continuation,
    "slow": slow,
    "stacking": stacking,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--addr", "--root", "--cert", "--key", "--authority"):
        p.add_argument(name, required=True)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("n", type=int)
    args = p.parse_args()
    overall_deadline(PATIENCE + 20, args.scenario)
    c = Raw(args)
    SCENARIOS[args.scenario](c, args.n)
    c.finish()
    say("result", "ok")


if __name__ == "__main__":
    main()
