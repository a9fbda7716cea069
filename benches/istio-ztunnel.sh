#!/bin/sh
# Builds Istio's ztunnel for the mesh bench's same-run comparison (`--istio <binary>`,
# benches/benches/mesh/istio.rs) and prints the binary's path.
#
#   bash benches/istio-ztunnel.sh [SOURCE]
#
# SOURCE is a checkout of https://github.com/istio/ztunnel; without it the script clones that
# into target/istio-ztunnel/src. The build is Istio's release profile (fat LTO, one codegen
# unit: ~16 min on 2 cores) with its default features (aws-lc, jemalloc), as Istio ships it,
# plus `testing`, which the bench needs for Istio's built-in test CA (FAKE_CA). It runs on a
# copy of the source, in its own target directory (target/istio-ztunnel/target), so our
# workspace's build is untouched. Needs protoc and cmake (apt-get: protobuf-compiler cmake).
#
# The copy drops one optional git dependency (boring-rustls-provider, used only by the
# `tls-boring` feature, which this build does not enable): a host that reaches only the package
# registries cannot resolve it, and without it the build needs crates.io alone.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/target/istio-ztunnel"

src=${1:-}
if [ -z "$src" ]; then
    src="$work/src"
    mkdir -p "$work"
    if [ ! -d "$src/.git" ]; then
        git clone --depth 1 https://github.com/istio/ztunnel "$src" || {
            echo "istio-ztunnel.sh: cannot clone istio/ztunnel; pass a checkout's path instead" >&2
            exit 1
        }
    fi
fi
[ -f "$src/Cargo.toml" ] && grep -q '^name = "ztunnel"' "$src/Cargo.toml" || {
    echo "istio-ztunnel.sh: $src is not a checkout of istio/ztunnel (no Cargo.toml naming ztunnel)" >&2
    exit 1
}
for tool in protoc cmake; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "istio-ztunnel.sh: $tool is missing; apt-get install protobuf-compiler cmake" >&2
        exit 1
    }
done

build="$work/build"
rm -rf "$build"
mkdir -p "$build"
# The tree without its git history and vendored FIPS libraries (large, and unused here).
(cd "$src" && tar --exclude=./.git --exclude=./vendor --exclude=./target -cf - .) | (cd "$build" && tar -xf -)
sed -i '/^boring-rustls-provider = /d; s/^tls-boring = .*/tls-boring = []/' "$build/Cargo.toml"
# The copy sits under our workspace's target directory; a workspace table of its own keeps
# cargo from taking it for a member of ours.
grep -q '^\[workspace\]' "$build/Cargo.toml" || printf '\n[workspace]\n' >> "$build/Cargo.toml"

(cd "$build" && CARGO_TARGET_DIR="$work/target" cargo build --release --features testing --bin ztunnel >&2)
echo "$work/target/release/ztunnel"
