#!/usr/bin/env bash
# Runs the SIGKILL crash loop (agent/tests/crash_loop.rs) with many rounds, e.g. thousands:
#   agent/tests/crash-loop.sh 2000
# CI runs 30 rounds as part of `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DROVER_CRASH_ROUNDS="${1:-1000}" cargo test --release -p drover --test crash_loop -- --nocapture
