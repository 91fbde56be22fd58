#!/bin/sh
# Builds the `http` example as it was at commit a539953 (handoff version 1, before builds
# declared their versions) into target/a539953, for tests/versions.rs: flip must upgrade from
# that build to this one and back. Its own target directory, so that it builds while the test
# suite's cargo holds its own. Does nothing when the binary is there.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/a539953"
bin="$out/target/debug/examples/http"
[ -x "$bin" ] && exit 0
rm -rf "$out/src"
mkdir -p "$out/src"
git -C "$root" archive a539953 | tar -x -C "$out/src"
cd "$out/src"
cargo build --quiet --example http --target-dir "$out/target" --locked
test -x "$bin"
