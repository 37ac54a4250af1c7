#!/usr/bin/env bash
# Runs the SIGKILL crash loop (agent/tests/crash_loop.rs) with many rounds, e.g. thousands:
#   agent/tests/crash-loop.sh 2000
# Every round changes the desired document (a new scratch guest, memory and power changes,
# signed destroys of older scratch guests), so most kills land with a step in flight; the test
# prints how many did and fails if fewer than half did. CI runs 30 rounds as part of
# `cargo test --workspace`. Needs ssh-keygen (the operator's signatures are real).
set -euo pipefail
cd "$(dirname "$0")/../.."
DROVER_CRASH_ROUNDS="${1:-1000}" cargo test --release -p drover --test crash_loop -- --nocapture
