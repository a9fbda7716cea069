#!/bin/sh
# The Debian tools the benches drive (benches/benches/{waypoint,mesh,config_apply}.rs): wrk
# (HTTP/1.1 load), h2load from nghttp2-client (HTTP/2 load), nginx (the waypoint's comparator,
# and the mesh bench's server), iperf3 (one-stream throughput) and bpftrace (how long a
# proxy's threads wait to run, src/sched.rs), and iptables, which the shared testbed's capture
# rules need (the tests' script installs it too; a bench may run first on a fresh host).
# Installs whichever is missing with apt-get, and mounts tracefs for bpftrace; needs root.
#
# Neither nginx nor iperf3 may run as a system service here: the benches start their own, in a
# network namespace, in the foreground, and a service on the host would hold their ports and
# add noise. So the install runs with a policy-rc.d that refuses service starts (Docker images
# ship one; if this host has none, one is put in place for the install and removed after),
# iperf3's debconf question "start as a daemon" is answered no before apt-get can ask it, and
# any nginx or iperf3 service the package scripts started anyway is stopped.
set -eu

missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v iperf3 >/dev/null 2>&1 || missing="$missing iperf3"
command -v bpftrace >/dev/null 2>&1 || missing="$missing bpftrace"
command -v iptables-save >/dev/null 2>&1 || missing="$missing iptables"

# bpftrace finds the scheduler's tracepoints in tracefs, which a fresh host may not have
# mounted ("tracepoint not found: sched:sched_switch").
if [ "$(id -u)" = 0 ] && [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing ||
        echo "benches/tools.sh: could not mount tracefs at /sys/kernel/tracing; config_apply's bpftrace needs it" >&2
fi

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "benches/tools.sh: missing$missing; run as root to install them with apt-get" >&2
    exit 1
fi
echo "benches/tools.sh: installing$missing with apt-get" >&2

case "$missing" in
*iperf3*)
    # Noninteractive takes each question's default; set this one explicitly in case a
    # preseed on this host says otherwise.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
    ;;
esac
policy=/usr/sbin/policy-rc.d
placed=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    placed=1
fi
status=0
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >&2; } ||
    status=$?
if [ -n "$placed" ]; then
    rm -f "$policy"
fi
if [ -s /run/nginx.pid ]; then
    pid=$(cat /run/nginx.pid)
    echo "benches/tools.sh: stopping the nginx service the package started (pid $pid)" >&2
    kill "$pid" 2>/dev/null || true
fi
if [ -s /run/iperf3.pid ]; then
    pid=$(cat /run/iperf3.pid)
    echo "benches/tools.sh: stopping the iperf3 service the package started (pid $pid)" >&2
    kill "$pid" 2>/dev/null || true
fi
# Under systemd the unit keeps no pid file, and it would start again at boot.
if [ -d /run/systemd/system ] && systemctl is-active --quiet iperf3.service 2>/dev/null; then
    echo "benches/tools.sh: stopping and disabling the iperf3 service the package started" >&2
    systemctl disable --now iperf3.service >&2 || true
fi
exit $status
