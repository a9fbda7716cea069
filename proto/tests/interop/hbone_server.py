#!/usr/bin/env python3
"""An HBONE server built on Python's ssl (OpenSSL) and python-h2, to test Ambit's HBONE client.

Listens on --listen (port 0: any free port) and prints `listening=ip:port`. Requires TLS 1.3, a
client certificate chaining to --root, ALPN h2; reports the negotiated TLS facts, the client's
URI SAN, whether it sent SNI and which ciphers it offered. Then it takes one CONNECT, answers
200, echoes every byte back, and when the client half-closes (END_STREAM) half-closes in turn.
A connection whose TLS handshake fails is reported (`tls_error=...`), closed after the alert
(gracefully, or at once with --abrupt-close) and the next one accepted, up to --max-connections.
Exits 0 with `result=ok` after one tunnel, 1 with `error=...` otherwise.
"""

import argparse
import socket
import ssl

import h2.errors
import h2.events
import h2.exceptions

from hbone_common import (
    describe_tls_error,
    Peer,
    Sender,
    fail,
    format_addr,
    overall_deadline,
    report_tls,
    say,
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1", help="the IP to listen on (port: any free)")
    p.add_argument("--root", required=True, help="PEM file of the root client certs must chain to")
    p.add_argument("--cert", required=True, help="PEM file of the server certificate")
    p.add_argument("--key", required=True, help="PEM file of the server private key")
    p.add_argument("--max-connections", type=int, default=1)
    p.add_argument(
        "--abrupt-close",
        action="store_true",
        help="after a failed handshake close at once, unread input and all (a RST), as "
        "Python's wrap_socket does by default",
    )
    p.add_argument("--io-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=int, default=30, help="the whole run's deadline, seconds")
    return p.parse_args()


def tls_context(args, sni_seen):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.root)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])

    def on_sni(_sock, server_name, _ctx):
        sni_seen.append(server_name)

    ctx.sni_callback = on_sni
    return ctx


def close_gracefully(tls):
    """Closes a connection whose handshake failed so that the client reads our TLS alert.

    Closing a socket with unread input (the client's first HTTP/2 bytes, sent right after its
    side of a TLS 1.3 handshake) makes the kernel answer with a RST, which can destroy the alert
    before the client reads it. So: FIN after the alert, read what is left, then close.
    """
    raw = socket.socket(fileno=tls.detach())
    try:
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(1.0)
        while raw.recv(65536):
            pass
    except OSError:
        pass
    raw.close()


class Server(Peer):
    def __init__(self, tls):
        super().__init__(tls, client_side=False, role="client")
        self.stream_id = None
        self.received = 0
        self.client_ended = False

    def handle(self, event):
        if isinstance(event, h2.events.RequestReceived):
            self.request(event)
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == self.stream_id:
            self.received += len(event.data)
            self.senders[self.stream_id].push(event.data)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.stream_id:
            self.client_ended = True
            say("client_end_stream", "yes")
            self.senders[self.stream_id].finish()
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == self.stream_id:
            fail(f"the client reset the tunnel ({event.error_code!s}) after {self.received} bytes")
        elif isinstance(event, h2.events.ConnectionTerminated):
            if not self.done():
                fail(f"the client closed the HTTP/2 connection (GOAWAY {event.error_code!s}) before the tunnel finished")

    def request(self, event):
        if self.stream_id is not None:
            self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers = list(event.headers)
        for name, value in headers:
            say(f"request_header:{name}", value)
        method = dict(headers).get(":method")
        if method != "CONNECT":
            self.conn.send_headers(event.stream_id, [(":status", "405")], end_stream=True)
            fail(f"expected a CONNECT, got {method}")
        self.stream_id = event.stream_id
        self.senders[self.stream_id] = Sender(self.conn, self.stream_id)
        self.conn.send_headers(self.stream_id, [(":status", "200")], end_stream=False)

    def done(self):
        sender = self.senders.get(self.stream_id)
        return sender is not None and sender.ended

    def serve(self):
        self.start()
        while not self.done():
            for event in self.read_events():
                self.handle(event)
            self.pump()
        say("received", self.received)
        say("echoed", self.senders[self.stream_id].sent)


def main():
    args = parse_args()
    overall_deadline(args.timeout, "the HBONE server")
    sni_seen = []
    ctx = tls_context(args, sni_seen)
    family = socket.AF_INET6 if ":" in args.listen else socket.AF_INET
    listener = socket.create_server((args.listen, 0), family=family)
    host, port = listener.getsockname()[:2]
    say("listening", format_addr(host, port))
    for _ in range(args.max_connections):
        raw, peer = listener.accept()
        raw.settimeout(args.io_timeout)
        say("accepted", format_addr(*peer[:2]))
        sni_seen.clear()
        # Handshake separately: a failing wrap_socket closes the socket at once, and that
        # close (with the client's first bytes unread) is a RST that can destroy our alert.
        tls = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            say("tls_error", describe_tls_error(e))
            if args.abrupt_close:
                tls.close()
            else:
                close_gracefully(tls)
            continue
        say("sni", sni_seen[0] if sni_seen else None)
        offered = tls.shared_ciphers() or []
        say("client_ciphers", ",".join(name for name, _, _ in offered))
        uris = report_tls(tls, "client")
        if len(uris) != 1:
            fail(f"the client certificate has URI SANs {uris}, expected exactly one")
        server = Server(tls)
        try:
            server.serve()
        except ssl.SSLError as e:
            say("tls_error", describe_tls_error(e))
            fail(f"TLS failed during the tunnel: {e}")
        except (OSError, h2.exceptions.ProtocolError) as e:
            fail(f"{type(e).__name__}: {e}")
        server.close()
        say("result", "ok")
        return
    fail(f"none of {args.max_connections} connections completed a tunnel")


if __name__ == "__main__":
    main()
