#!/usr/bin/env bash
# Conformance of pve-sim with real third-party clients: proxmoxer drives a full LXC lifecycle
# and Ansible's community.proxmox modules create/update/start/stop/remove a CT, snapshot it and
# list tasks; every answer is checked against expectations written from proxmox-api.md and the
# PVE fixtures (conformance.py), never against pve-sim's own output.
#
# Installs pinned clients from the Python package index into a virtualenv under
# target/conformance (reused while requirements.txt is unchanged) and builds the pve-sim binary.
# Usage: pve-sim/conformance/run.sh   (exit 0 only if every check passed)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="${CONFORMANCE_CACHE:-$root/target/conformance}"
python="${PYTHON:-python3}"
# The community package that carries community.proxmox 1.4.0 (only that collection is used).
ansible_wheel="ansible-12.3.0-py3-none-any.whl"
ansible_sha256="cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414"

mkdir -p "$cache"
req_hash=$(sha256sum "$here/requirements.txt" | cut -c1-16)
venv="$cache/venv-$req_hash"
# A venv cannot be moved (its scripts name their path), so completion is marked by a file.
if [ ! -f "$venv/.complete" ]; then
  echo "conformance: creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.complete"
fi

collections="$cache/collections-12.3.0"
if [ ! -d "$collections/ansible_collections/community/proxmox" ]; then
  echo "conformance: fetching $ansible_wheel (community.proxmox)"
  rm -rf "$cache/dl" "$collections.tmp"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    -d "$cache/dl" "ansible==12.3.0"
  echo "$ansible_sha256  $cache/dl/$ansible_wheel" | sha256sum -c --quiet
  "$venv/bin/python" - "$cache/dl/$ansible_wheel" "$collections.tmp" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "ansible_collections/community/proxmox/"
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(prefix)])
PY
  mv "$collections.tmp" "$collections"
  rm -rf "$cache/dl"
fi

cargo build --quiet -p pve-sim --bin pve-sim
target_dir=$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$venv/bin/python" "$here/conformance.py" \
  --sim "$target_dir/debug/pve-sim" \
  --collections "$collections" \
  --fixtures "$root/../shared/reference/pve-fixtures"
