# Sourced by scripts/up, scripts/test, scripts/build-images and scripts/test-images (and
# .ci/run): installs with apt what a fresh Debian or Ubuntu lacks for them. Each argument is
# COMMAND:PACKAGES, the packages installed when COMMAND is missing; PYTHON:h2 stands for
# Python's h2 module (the HBONE interop tests talk to it).
install_missing() {
  local packages=() missing=() want cmd
  for want in "$@"; do
    cmd=${want%%:*}
    if [ "$cmd" = PYTHON ]; then
      python3 -c "import ${want#*:}" >/dev/null 2>&1 && continue
      missing+=("python3 module ${want#*:}")
      packages+=("python3-${want#*:}")
      continue
    fi
    command -v "$cmd" >/dev/null 2>&1 && continue
    missing+=("$cmd")
    # shellcheck disable=SC2206 # a word list on purpose: "gcc libc6-dev"
    packages+=(${want#*:})
  done
  [ ${#packages[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]}; this is not a Debian or Ubuntu system (no apt-get):" \
      "install the equivalents of ${packages[*]} and run it again" >&2
    exit 1
  fi
  echo "== installing with apt: ${packages[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}
