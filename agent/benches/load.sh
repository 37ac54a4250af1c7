#!/bin/bash
# An artificial load like a cargo build beside the agent, for the "under load" figures in
# BENCHMARKS.md: one busy loop per core and a writer that fdatasyncs 32 MiB in a loop.
# Usage: agent/benches/load.sh & (stop it with: kill -- -$!  or  pkill -f benches/load.sh)
trap 'kill 0' EXIT
for _ in $(seq "$(nproc)"); do ( while :; do :; done ) & done
( while :; do dd if=/dev/zero of="${TMPDIR:-/tmp}/drover-bench-load" bs=1M count=32 conv=fdatasync status=none; done ) &
wait
