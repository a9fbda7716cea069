"""Shared pieces of the HBONE interop scripts (hbone_client.py, hbone_server.py).

They speak HBONE with Python's ssl module (OpenSSL) and the python-h2 package, a TLS and HTTP/2
stack Ambit did not write. Everything they learn is printed on stdout as `key=value` lines,
flushed at once, for the Rust test (proto/tests/hbone_interop.rs) to assert on. Failures print
`error=...` (or `tls_error=...` when TLS itself refused) and exit 1.
"""

import signal
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

READ_SIZE = 256 * 1024


def say(key, value):
    print(f"{key}={value}", flush=True)


def fail(message):
    say("error", message)
    print(f"{sys.argv[0]}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def describe_tls_error(err):
    """OpenSSL's reason code (e.g. TLSV1_ALERT_UNKNOWN_CA) first, then the message."""
    reason = getattr(err, "reason", None)
    return f"{reason or type(err).__name__}: {err}"


def tls_fail(err):
    say("tls_error", describe_tls_error(err))
    print(f"{sys.argv[0]}: TLS failed: {err}", file=sys.stderr, flush=True)
    sys.exit(1)


def overall_deadline(seconds, what):
    """Whatever happens, the script ends within `seconds`."""

    def on_alarm(_signum, _frame):
        fail(f"{what} did not finish within {seconds}s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def host_port(text):
    """'1.2.3.4:5' or '[::1]:5' -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def format_addr(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pattern(length):
    """A byte pattern that catches loss, reordering and duplication (period 65521, a prime)."""
    block = bytes((i * 31 + (i >> 8)) & 0xFF for i in range(65521))
    whole, rest = divmod(length, len(block))
    return block * whole + block[:rest]


def report_tls(tls, peer):
    """Prints the negotiated TLS facts and the peer's SANs; returns the peer's URI SANs."""
    say("tls_version", tls.version())
    cipher = tls.cipher()
    say("cipher", cipher[0] if cipher else None)
    say("alpn", tls.selected_alpn_protocol())
    cert = tls.getpeercert()
    if not cert:
        fail(f"the {peer} presented no certificate")
    uris = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI":
            uris.append(value)
            say(f"{peer}_san", value)
        else:
            say(f"{peer}_other_san", f"{kind}:{value}")
    return uris


def setting_name(code):
    try:
        return h2.settings.SettingCodes(code).name
    except ValueError:
        return str(int(code))


class Sender:
    """One stream's outbound bytes, sent as fast as the peer's flow-control windows allow."""

    def __init__(self, conn, stream_id):
        self.conn = conn
        self.stream_id = stream_id
        self.buf = bytearray()
        self.end_requested = False
        self.ended = False
        self.sent = 0

    def push(self, data):
        self.buf += data

    def finish(self):
        self.end_requested = True

    def pump(self):
        while self.buf:
            window = self.conn.local_flow_control_window(self.stream_id)
            size = min(window, self.conn.max_outbound_frame_size, len(self.buf))
            if size <= 0:
                break  # wait for WINDOW_UPDATE
            self.conn.send_data(self.stream_id, bytes(self.buf[:size]))
            del self.buf[:size]
            self.sent += size
        if not self.buf and self.end_requested and not self.ended:
            self.conn.end_stream(self.stream_id)
            self.ended = True


class Peer:
    """An h2 connection over a TLS socket, with the bookkeeping both scripts share."""

    def __init__(self, tls, client_side, role):
        self.tls = tls
        self.role = role  # what the other side is called in the output: "server" or "client"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        )
        self.senders = {}
        self.settings_seen = False
        self.conn_window_update_seen = False
        self.terminated = None

    def start(self):
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def pump(self):
        for sender in self.senders.values():
            sender.pump()
        self.flush()

    def read_events(self):
        """Blocks for the next bytes from the peer; returns the events they carry."""
        self.pump()
        try:
            data = self.tls.recv(READ_SIZE)
        except socket.timeout:
            fail(f"timed out waiting for the {self.role}")
        if not data:
            fail(f"the {self.role} closed the connection")
        events = self.conn.receive_data(data)
        for event in events:
            self.common(event)
        return events

    def common(self, event):
        if isinstance(event, h2.events.RemoteSettingsChanged) and not self.settings_seen:
            self.settings_seen = True
            for code, changed in sorted(event.changed_settings.items()):
                say(f"{self.role}_setting:{setting_name(code)}", changed.new_value)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0 and not self.conn_window_update_seen:
                self.conn_window_update_seen = True
                say(f"{self.role}_connection_window_increment", event.delta)
        elif isinstance(event, h2.events.DataReceived):
            # Hand the window back at once so a large tunnel never stalls on flow control.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
            say(
                "goaway",
                f"error_code={event.error_code!s} last_stream_id={event.last_stream_id}",
            )

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
            self.tls.close()
        except (OSError, ssl.SSLError):
            pass
