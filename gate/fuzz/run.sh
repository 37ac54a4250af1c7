#!/bin/bash
# Runs every gate fuzz target for a bounded time (default 60 s each):
#   gate/fuzz/run.sh [seconds]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds come from the
# committed vectors in testdata/gate/. Exit status is non-zero if any target finds a crash.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
mkdir -p corpus/payload_parse corpus/trust_parse corpus/sshsig_decode
cp -f ../../testdata/gate/approval*.txt corpus/payload_parse/
# A seed with `bind.*` lines (the safety copy's acknowledgements), so the fuzzer starts there.
sed 's/^role: /bind.safety: vzdump@safety\nbind.uncovered: mp1,unused0\nrole: /' \
  ../../testdata/gate/approval.txt > corpus/payload_parse/approval_bind.txt
cp -f ../../testdata/gate/trust_v*.txt corpus/trust_parse/
for f in ../../testdata/gate/*.sig; do
  case "$f" in *huge*) continue ;; esac
  printf '\0' | cat - "$f" > "corpus/sshsig_decode/$(basename "$f")"
done
for t in payload_parse trust_parse sshsig_decode; do
  echo "== $t (${SECS}s)"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=16384 -rss_limit_mb=512 2>&1 \
    | grep -E "^#[0-9]+.*(DONE|pulse)|Done [0-9]+ runs|ERROR|panicked|SUMMARY" | tail -3
done
