#!/usr/bin/env python3
"""An HBONE client built on Python's ssl (OpenSSL) and python-h2, to test Ambit's HBONE server.

Dials --addr with TLS 1.3, a client certificate, ALPN h2 and no SNI; checks that the server's
only URI SAN is --expect-id; then, on one HTTP/2 connection:
  * for each --refuse STATUS,AUTHORITY: sends a CONNECT to AUTHORITY and expects STATUS back
    (with END_STREAM), printing the server's reason header;
  * with --authority: sends a CONNECT to it (plus any --header NAME=VALUE), expects 200, sends
    --payload-bytes of a byte pattern, reads the whole echo back and checks it, then half-closes
    (END_STREAM) and expects the server's END_STREAM in return.
Prints what it learns as key=value lines; exits 0 with `result=ok`, or 1 with `error=...` or
`tls_error=...`.
"""

import argparse
import socket
import ssl

import h2.events
import h2.exceptions

from hbone_common import (
    Peer,
    Sender,
    fail,
    host_port,
    overall_deadline,
    pattern,
    report_tls,
    say,
    tls_fail,
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="the HBONE endpoint, ip:port or [ip6]:port")
    p.add_argument("--root", required=True, help="PEM file of the mesh root to trust")
    p.add_argument("--cert", help="PEM file of the client certificate (omit to send none)")
    p.add_argument("--key", help="PEM file of the client private key")
    p.add_argument("--expect-id", required=True, help="the server's expected SPIFFE ID")
    p.add_argument("--authority", help="ip:port to open an echo tunnel to")
    p.add_argument("--payload-bytes", type=int, default=1024 * 1024)
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE on the CONNECT")
    p.add_argument(
        "--refuse",
        action="append",
        default=[],
        help="STATUS,AUTHORITY: a CONNECT the server must refuse with STATUS",
    )
    p.add_argument("--tls-version", choices=["1.3", "1.2"], default="1.3")
    p.add_argument("--alpn", default="h2", help="comma-separated ALPN protocols to offer")
    p.add_argument("--io-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=int, default=30, help="the whole run's deadline, seconds")
    return p.parse_args()


def tls_context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.tls_version == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        # Only to check that the server refuses anything older than TLS 1.3.
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    # Identities are SPIFFE URI SANs checked below, not host names; there is no SNI.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.root)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols([p for p in args.alpn.split(",") if p])
    return ctx


class Stream:
    def __init__(self):
        self.headers = None
        self.data = bytearray()
        self.ended = False
        self.reset = None


class Client(Peer):
    def __init__(self, tls):
        super().__init__(tls, client_side=True, role="server")
        self.streams = {}

    def open(self, authority, extra_headers=()):
        stream_id = self.conn.get_next_available_stream_id()
        # An HTTP/2 CONNECT carries only :method and :authority (RFC 9113 8.5).
        headers = [(":method", "CONNECT"), (":authority", authority)]
        headers += list(extra_headers)
        self.conn.send_headers(stream_id, headers, end_stream=False)
        self.streams[stream_id] = Stream()
        self.flush()
        return stream_id

    def run_until(self, done):
        while not done():
            for event in self.read_events():
                self.handle(event)

    def handle(self, event):
        stream = self.streams.get(getattr(event, "stream_id", None))
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.data += event.data
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            fail(f"the server closed the HTTP/2 connection (GOAWAY {event.error_code!s})")

    def answered(self, stream_id):
        s = self.streams[stream_id]
        return lambda: s.headers is not None or s.reset is not None

    def refusal(self, status, authority):
        stream_id = self.open(authority)
        s = self.streams[stream_id]
        self.run_until(lambda: (s.headers is not None and s.ended) or s.reset is not None)
        if s.headers is None:
            fail(f"CONNECT {authority}: the server reset the stream ({s.reset!s}) instead of answering")
        got = s.headers.get(":status")
        reason = s.headers.get("ambit-error", "")
        say("refused", f"{authority} status={got} end_stream={'yes' if s.ended else 'no'} reason={reason}")
        if got != status:
            fail(f"CONNECT {authority}: expected status {status}, got {got} ({reason})")
        # The server is done with the stream; close our half too unless it already reset it.
        try:
            self.conn.end_stream(stream_id)
            self.flush()
        except h2.exceptions.StreamClosedError:
            pass

    def echo(self, authority, headers, payload):
        stream_id = self.open(authority, headers)
        s = self.streams[stream_id]
        self.run_until(self.answered(stream_id))
        if s.headers is None:
            fail(f"CONNECT {authority}: the server reset the stream ({s.reset!s}) instead of answering")
        say("status", s.headers.get(":status"))
        for name, value in sorted(s.headers.items()):
            say(f"response_header:{name}", value)
        if s.headers.get(":status") != "200":
            fail(f"CONNECT {authority}: expected 200, got {s.headers.get(':status')} ({s.headers.get('ambit-error', 'no reason given')})")
        if s.ended:
            fail(f"CONNECT {authority}: the server ended the tunnel before we sent anything")

        sender = Sender(self.conn, stream_id)
        self.senders[stream_id] = sender
        sender.push(payload)

        def echoed():
            if s.reset is not None:
                fail(f"the server reset the tunnel ({s.reset!s}) after {len(s.data)} echoed bytes")
            if s.ended and len(s.data) < len(payload):
                fail(f"the server ended the tunnel after {len(s.data)} of {len(payload)} echoed bytes")
            return len(s.data) >= len(payload)

        self.run_until(echoed)
        say("sent", sender.sent)
        say("echoed", len(s.data))
        if bytes(s.data[: len(payload)]) != payload:
            first = next(i for i, (a, b) in enumerate(zip(s.data, payload)) if a != b)
            fail(f"the echo differs from what was sent at byte {first}")

        # Half-close: the server's echo loop sees EOF and must half-close in turn.
        sender.finish()
        self.run_until(lambda: s.ended or s.reset is not None)
        if s.reset is not None:
            fail(f"after our END_STREAM the server reset the tunnel ({s.reset!s}) instead of ending it")
        if len(s.data) != len(payload):
            fail(f"the server sent {len(s.data) - len(payload)} bytes more than it was sent")
        say("echo_end_stream", "yes")


def main():
    args = parse_args()
    overall_deadline(args.timeout, "the HBONE client")
    ctx = tls_context(args)
    host, port = host_port(args.addr)
    try:
        raw = socket.create_connection((host, port), timeout=args.io_timeout)
    except OSError as e:
        fail(f"could not connect to {args.addr}: {e}")
    try:
        tls = ctx.wrap_socket(raw, server_hostname=None)
    except (ssl.SSLError, ssl.CertificateError) as e:
        tls_fail(e)
    except OSError as e:
        fail(f"the TLS handshake with {args.addr} failed: {e}")

    uris = report_tls(tls, "server")
    if uris != [args.expect_id]:
        fail(f"the server's URI SANs are {uris}, expected exactly [{args.expect_id!r}]")

    client = Client(tls)
    try:
        client.start()
        # The server's SETTINGS come first on every HTTP/2 connection.
        client.run_until(lambda: client.settings_seen)
        for spec in args.refuse:
            status, _, authority = spec.partition(",")
            client.refusal(status, authority)
        if args.authority:
            headers = [tuple(h.split("=", 1)) for h in args.header]
            client.echo(args.authority, headers, pattern(args.payload_bytes))
        # TLS 1.3 tickets come after the handshake; by now any would have arrived.
        session = tls.session
        say("session_ticket", "yes" if session is not None and session.has_ticket else "no")
    except ssl.SSLError as e:
        # A TLS 1.3 server's refusal of our certificate only arrives after the handshake.
        tls_fail(e)
    except (OSError, h2.exceptions.ProtocolError) as e:
        fail(f"{type(e).__name__}: {e}")
    client.close()
    say("result", "ok")


if __name__ == "__main__":
    main()
