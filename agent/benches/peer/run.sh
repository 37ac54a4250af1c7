#!/usr/bin/env bash
# Runs the peer benchmark script (peer.py) in a virtualenv with the pinned proxmoxer from
# requirements.txt, made under target/peer (reused while requirements.txt is unchanged).
# The engine benchmark calls it (`cargo bench -p drover --bench engine -- --peer`) against the
# same simulator as Drover, in the same run.
# Usage: agent/benches/peer/run.sh PORT CA_PEM NODE TOKEN_ID SECRET PARALLEL
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cache="${PEER_CACHE:-$root/target/peer}"
python="${PYTHON:-python3}"
mkdir -p "$cache"
req_hash=$(sha256sum "$here/requirements.txt" | cut -c1-16)
venv="$cache/venv-$req_hash"
# A venv cannot be moved (its scripts name their path), so completion is marked by a file.
if [ ! -f "$venv/.complete" ]; then
  echo "peer: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  touch "$venv/.complete"
fi
exec "$venv/bin/python" "$here/peer.py" "$@"
