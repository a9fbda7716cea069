# Sourced by e2e/kind/run: logging, retries, and reading the mesh's metrics through the API
# server. Everything here talks to the cluster through k (kubectl pinned to the kind cluster's
# context), never to whatever context kubectl has current.
# shellcheck shell=bash

log() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/     /'; }
fail() {
  printf '\nFAILED: %s\n' "$*" >&2
  exit 1
}

# kubectl on the kind cluster only.
k() { kubectl --context "kind-$CLUSTER" "$@"; }

# Runs a command as root (sudo when not root): the images are in root's image store.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

# eventually SECONDS WHAT COMMAND...: runs COMMAND every 3 s until it succeeds; after SECONDS
# fails with WHAT and the command's last output.
eventually() {
  local seconds=$1 what=$2 deadline out
  shift 2
  deadline=$((SECONDS + seconds))
  while :; do
    if out=$("$@" 2>&1); then
      [ -z "$out" ] || printf '%s\n' "$out"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s\n' "$out" >&2
      fail "$what (not within ${seconds}s)"
    fi
    sleep 3
  done
}

# The one pod of NAMESPACE matching SELECTOR (running, not being deleted).
pod_of() {
  local pods
  pods=$(k -n "$1" get pods -l "$2" --field-selector=status.phase=Running \
    -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}')
  [ "$(grep -c . <<<"$pods")" -eq 1 ] || fail "expected one running pod $2 in $1, found: ${pods:-none}"
  echo "$pods"
}

node_of() { k -n "$1" get pod "$2" -o jsonpath='{.spec.nodeName}'; }

# The ztunnel pod on NODE.
ztunnel_on() {
  local pod
  pod=$(k -n ambit-system get pods -l app=ztunnel --field-selector "spec.nodeName=$1" \
    -o go-template='{{range .items}}{{.metadata.name}}{{"\n"}}{{end}}' | head -n 1)
  [ -n "$pod" ] || fail "no ztunnel pod on node $1"
  echo "$pod"
}

# The Prometheus text of NAMESPACE/POD's port PORT (/metrics), through the API server's pod
# proxy: no port-forward, and nothing run inside the (shell-less) image.
metrics_of() {
  k get --raw "/api/v1/namespaces/$1/pods/$2:${3:-15020}/proxy/metrics"
}

# metric NAMESPACE POD NAME LABEL...: metric_sum (below) of that pod's metrics on 15020; fails
# when they cannot be read, so that a failed read is never taken for a count of 0.
metric() {
  local text
  if ! text=$(metrics_of "$1" "$2") || [ -z "$text" ]; then
    echo "could not read the metrics of $1/$2" >&2
    return 1
  fi
  metric_sum "$3" "${@:4}" <<<"$text"
}

# metric_sum NAME LABEL...: the sum over the series of counter NAME (Prometheus text on stdin)
# whose labels include every LABEL (`key="value"`, matched as text: order does not matter).
metric_sum() {
  local name=$1
  shift
  awk -v name="$name" -v want="$(printf '%s\n' "$@")" '
    BEGIN { n = split(want, w, "\n") }
    index($0, name "{") == 1 {
      for (i = 1; i <= n; i++) if (w[i] != "" && index($0, w[i]) == 0) next
      sum += $NF
    }
    END { printf "%d\n", sum }'
}

# metric_lines NAME LABEL...: those series themselves, for the log.
metric_lines() {
  local name=$1
  shift
  awk -v name="$name" -v want="$(printf '%s\n' "$@")" '
    BEGIN { n = split(want, w, "\n") }
    index($0, name "{") == 1 {
      for (i = 1; i <= n; i++) if (w[i] != "" && index($0, w[i]) == 0) next
      print
    }'
}

# requests NAMESPACE DEPLOYMENT URL COUNT: COUNT requests, one connection each, from the curl
# container of DEPLOYMENT; one line per request: the body, or `FAIL <curl exit code>`.
requests() {
  # shellcheck disable=SC2016 # expanded by the pod's shell
  k -n "$1" exec "deploy/$2" -- sh -c '
    i=0
    while [ "$i" -lt "$2" ]; do
      i=$((i + 1))
      curl -s --max-time 5 "$1" || echo "FAIL $?"
    done' sh "$3" "$4"
}

# statuses NAMESPACE DEPLOYMENT URL COUNT: the same, one line per request: `<status>
# <x-ambit-flags>` (status 000 when no HTTP answer came).
statuses() {
  # shellcheck disable=SC2016 # expanded by the pod's shell
  k -n "$1" exec "deploy/$2" -- sh -c '
    i=0
    while [ "$i" -lt "$2" ]; do
      i=$((i + 1))
      curl -s -o /dev/null --max-time 5 -w "%{http_code} %header{x-ambit-flags}\n" "$1" || true
    done' sh "$3" "$4"
}

# Pod name, uid, restart count and container start time of each pod of NAMESPACE: equal
# before and after means no pod was restarted or replaced.
pod_lives() {
  k -n "$1" get pods -o go-template='{{range .items}}{{.metadata.name}} uid={{.metadata.uid}}{{range .status.containerStatuses}} restarts={{.restartCount}} started={{if .state.running}}{{.state.running.startedAt}}{{else}}not-running{{end}}{{end}}{{"\n"}}{{end}}'
}
