#!/bin/bash
# Signs the job vectors (`drover-job v1`) with real ssh-keygen and the TEST keys made by
# make-vectors.sh (run that first only if the keys are regenerated). TEST KEYS ONLY.
#
#   testdata/gate/make-job-vectors.sh
#
# The texts are what gate::render_job_request renders for gate/tests/matrix.rs's jobs
# (`job_vectors_match_the_renderer` keeps them equal): fleet test-fleet-1, host pve-test-01,
# epoch 5b0c2f9e7d4a4c1e, window 2026-11-22T21:00:00Z..22:00:00Z.
set -euo pipefail
cd "$(dirname "$0")"
OPNS=destructive-op-v1@agent.example.invalid
RECNS=trust-rotation-v1@agent.example.invalid

cat > job_restore.txt <<'JOB'
drover-job v1
fleet: test-fleet-1
host: pve-test-01
state-epoch: 5b0c2f9e7d4a4c1e
job: restore_backup
guest: lxc/101
guest-config-sha1: 6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c
param.force: 1
param.ostemplate: local:backup/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst
param.restore: 1
param.storage: local-lvm
bind.archive-ctime: 1795381201
bind.archive-size: 432013312
bind.archive-vmid: 101
bind.hold: 0
role: operational
nonce: 2a6e0c1f9b8d4e3a7c5b1d0e9f8a7b6c
not-before: 2026-11-22T21:00:00Z
expires-at: 2026-11-22T22:00:00Z
ticket: CHG-4711
JOB

cat > job_snapshot.txt <<'JOB'
drover-job v1
fleet: test-fleet-1
host: pve-test-01
state-epoch: 5b0c2f9e7d4a4c1e
job: snapshot
guest: lxc/101
guest-config-sha1: 6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c
param.description: before-upgrade
param.snapname: pre-upgrade
bind.hold: 0
role: operational
nonce: 3b7f1d2a0c9e5f4b8d6c2e1f0a9b8c7d
not-before: 2026-11-22T21:00:00Z
expires-at: 2026-11-22T22:00:00Z
JOB

# One byte of a bind line changed after signing (the signature is over job_restore.txt).
sed 's/^bind.archive-size: 432013312$/bind.archive-size: 432013313/' job_restore.txt > job_restore_edited.txt

sign() { # key file namespace tag
  cp "TEST_$1" "/tmp/job-vector-key-$$"; chmod 600 "/tmp/job-vector-key-$$"
  ssh-keygen -q -Y sign -f "/tmp/job-vector-key-$$" -n "$3" "$2"
  mv "$2.sig" "$2.$4.sig"; rm -f "/tmp/job-vector-key-$$"
}
for f in job_restore.txt job_snapshot.txt; do
  sign operator1_ed25519 "$f" "$OPNS" operator1
  sign operator2_ecdsa_p256 "$f" "$OPNS" operator2
  sign stranger_ed25519 "$f" "$OPNS" stranger
done
sign recovery1_ed25519 job_restore.txt "$RECNS" recovery1
