# Sourced by scripts/up, scripts/test and scripts/test-images: they build network namespaces,
# which needs root (scripts/build-images, which needs it for another reason, says which in
# ROOT_REASON).
# In a root shell (a fresh Debian has no sudo) they just run. Otherwise, if sudo exists, the
# script runs itself again through it, keeping this user's Rust toolchain on PATH (sudo
# resets PATH, and rustup's cargo lives in the user's home); without sudo it says how to get
# a root shell and stops.
as_root() {
  local script=$1 reason=${ROOT_REASON:-it builds network namespaces}
  shift
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then
    echo "== $script needs root ($reason): running it again with sudo" >&2
    exec sudo env "PATH=$PATH" \
      "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
      "$script" "$@"
  fi
  echo "$script needs root ($reason) and this shell is not root" \
    "(uid $(id -u)), nor is sudo installed: run it from a root shell, e.g. \`su -\` then" \
    "\`cd $PWD && $script${*:+ $*}\`" >&2
  exit 1
}
