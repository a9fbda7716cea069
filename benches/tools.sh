#!/bin/sh
# The Debian tools the waypoint bench drives (benches/benches/waypoint.rs): wrk (HTTP/1.1
# load), h2load from nghttp2-client (HTTP/2 load) and nginx (the reverse proxy it compares the
# waypoint with). Installs whichever is missing with apt-get; needs root.
#
# nginx must never run as a system service here: the bench starts its own, in a network
# namespace, with a temporary config and `daemon off`. So the install runs with a policy-rc.d
# that refuses service starts (Docker images ship one; if this host has none, one is put in
# place for the install and removed after), and any nginx the package's scripts started anyway
# is stopped through its pid file.
set -eu

missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "benches/tools.sh: missing$missing; run as root to install them with apt-get" >&2
    exit 1
fi
echo "benches/tools.sh: installing$missing with apt-get" >&2

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
exit $status
