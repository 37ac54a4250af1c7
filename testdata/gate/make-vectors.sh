#!/bin/bash
# Regenerates the gate's test vectors with real ssh-keygen (plus python3 + `cryptography` for the
# hand-crafted malformed blobs). TEST KEYS ONLY: every private key here is public and throwaway.
#
#   testdata/gate/make-vectors.sh        (run from anywhere; rewrites this folder's vectors)
#
# Fixed values shared with gate/tests/common/mod.rs: fleet test-fleet-1, host pve-test-01,
# domain agent.example.invalid, state epoch 5b0c2f9e7d4a4c1e, the approval window
# 2026-11-22T21:00:00Z..22:00:00Z (tests verify at 21:30:00Z).
set -euo pipefail
cd "$(dirname "$0")"
D=agent.example.invalid
OPNS=destructive-op-v1@$D
RECNS=trust-rotation-v1@$D
HUBNS=desired-state-v1@$D

rm -f TEST_* ./*.sig ./*.txt allowed_signers* revoked_keys

key() { ssh-keygen -q -t "$1" ${3:+-b "$3"} -N '' -C "TEST-ONLY-$2" -f "TEST_$2"; }
key ed25519 operator1_ed25519
key ed25519 operator1b_ed25519
key ecdsa operator2_ecdsa_p256 256
key rsa operator3_rsa3072 3072
key ed25519 operator5_ed25519
key ed25519 recovery1_ed25519
key ed25519 recovery2_ed25519
key ed25519 recovery3_ed25519
key ed25519 hub_ed25519
key ed25519 stranger_ed25519
key rsa rsa1024_weak 1024
key dsa dsa
key ed25519 sk_seed_ed25519
key ed25519 ca_ed25519
key ed25519 certkey_ed25519
ssh-keygen -q -s TEST_ca_ed25519 -I test-operator6-cert -n operator6@example.invalid \
  -V 20260101:20301231 TEST_certkey_ed25519.pub

pub() { cut -d' ' -f1,2 "$1"; }
line() { # principal namespace valid-before pubfile
  echo "$1 namespaces=\"$2\",valid-before=\"$3\" $(pub "$4")"
}

# The approval the agent renders for: destroy_guest of CT 9101 with its fixed destroy params.
approval() { # guest digest role nonce
  printf 'drover-approval v1\nfleet: test-fleet-1\nhost: pve-test-01\nstate-epoch: 5b0c2f9e7d4a4c1e\nop: destroy_guest\nguest: lxc/%s\nguest-config-sha1: %s\nparam.destroy-unreferenced-disks: 1\nparam.force: %s\nparam.purge: 1\nrole: %s\nnonce: %s\nnot-before: 2026-11-22T21:00:00Z\nexpires-at: 2026-11-22T22:00:00Z\nticket: CHG-4711\n' "$@"
}
DIG=6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c
DIG2=0d7a3e1f9b2c4d5e6f708192a3b4c5d6e7f80912
N1=7f3c9a1e5b2d4f6081a2c3d4e5f60718
approval 9101 $DIG 1 operational $N1 > approval.txt
approval 9101 $DIG 0 operational $N1 > approval_force0.txt
approval 9102 $DIG 1 operational $N1 > approval_vmid9102.txt
approval 9102 $DIG2 1 operational $N1 > approval_other_action.txt
approval 9101 $DIG 1 recovery $N1 > approval_role_recovery.txt
sed 's/^expires-at: .*/expires-at: 2026-11-23T22:00:00Z/' approval.txt > approval_25h.txt

# Synthetic sk-ssh-ed25519 key of operator4 (no FIDO token here; built from a software key).
python3 make-crafted.py skkey

# Trust document v1 (tests derive variants from it: thresholds, validity, bad lines).
{
  printf 'drover-trust v1\nfleet: test-fleet-1\ndomain: %s\nversion: 1\nprevious-sha256: %s\nthreshold.destructive-op: 1\nthreshold.trust-rotation: 2\nsigners:\n' $D "$(printf '0%.0s' {1..64})"
  line operator1@example.invalid $OPNS 20271231235959Z TEST_operator1_ed25519.pub
  line operator1@example.invalid $OPNS 20271231235959Z TEST_operator1b_ed25519.pub
  line operator2@example.invalid $OPNS 20271231235959Z TEST_operator2_ecdsa_p256.pub
  line operator3@example.invalid $OPNS 20271231235959Z TEST_operator3_rsa3072.pub
  line recovery1@example.invalid $RECNS 20291231235959Z TEST_recovery1_ed25519.pub
  line recovery2@example.invalid $RECNS 20291231235959Z TEST_recovery2_ed25519.pub
  line hub@example.invalid $HUBNS 20291231235959Z TEST_hub_ed25519.pub
  line operator4@example.invalid $OPNS 20271231235959Z TEST_sk_operator4.pub
} > trust_v1.txt

V1SHA=$(sha256sum trust_v1.txt | cut -d' ' -f1)
v2head() { # previous-sha256 thresholds...
  printf 'drover-trust v1\nfleet: test-fleet-1\ndomain: %s\nversion: 2\nprevious-sha256: %s\nnot-before: 2026-11-22T00:00:00Z\nexpires-at: 2026-11-29T00:00:00Z\nthreshold.destructive-op: 1\nthreshold.trust-rotation: 2\nsigners:\n' $D "$1"
}
# v2: planned rotation (operator1b out, operator5 in; recovery keys and thresholds unchanged).
{
  v2head "$V1SHA"
  line operator1@example.invalid $OPNS 20271231235959Z TEST_operator1_ed25519.pub
  line operator2@example.invalid $OPNS 20271231235959Z TEST_operator2_ecdsa_p256.pub
  line operator3@example.invalid $OPNS 20271231235959Z TEST_operator3_rsa3072.pub
  line operator5@example.invalid $OPNS 20271231235959Z TEST_operator5_ed25519.pub
  line recovery1@example.invalid $RECNS 20291231235959Z TEST_recovery1_ed25519.pub
  line recovery2@example.invalid $RECNS 20291231235959Z TEST_recovery2_ed25519.pub
  line hub@example.invalid $HUBNS 20291231235959Z TEST_hub_ed25519.pub
} > trust_v2.txt
# v2 that replaces recovery2 by recovery3 (needs recovery3's signature as well).
sed "s|^recovery2@example.invalid .*|$(line recovery3@example.invalid $RECNS 20291231235959Z TEST_recovery3_ed25519.pub)|" trust_v2.txt > trust_v2_recovery_swap.txt
# v2 that leaves a single recovery principal for threshold 2 (lock-out).
grep -v '^recovery2@' trust_v2.txt > trust_v2_lockout.txt
# v3, chained to v2.
sed -e "s/^version: 2$/version: 3/" -e "s/^previous-sha256: .*/previous-sha256: $(sha256sum trust_v2.txt | cut -d' ' -f1)/" trust_v2.txt > trust_v3.txt

sign() { # key namespace file [suffix] [extra opts]
  ssh-keygen -Y sign -q -f "$1" -n "$2" ${5:-} < "$3" > "$3.$4.sig"
}
sign TEST_operator1_ed25519 $OPNS approval.txt operator1
sign TEST_operator1_ed25519 $OPNS approval.txt operator1.sha256 "-O hashalg=sha256"
sign TEST_operator1b_ed25519 $OPNS approval.txt operator1b
sign TEST_operator2_ecdsa_p256 $OPNS approval.txt operator2
sign TEST_operator3_rsa3072 $OPNS approval.txt operator3
sign TEST_operator5_ed25519 $OPNS approval.txt operator5
sign TEST_recovery1_ed25519 $OPNS approval.txt recovery1
sign TEST_hub_ed25519 $OPNS approval.txt hub
sign TEST_operator1_ed25519 file approval.txt operator1.filens
sign TEST_stranger_ed25519 $OPNS approval.txt stranger
sign TEST_rsa1024_weak $OPNS approval.txt rsa1024
sign TEST_dsa $OPNS approval.txt dsa
sign TEST_certkey_ed25519-cert.pub $OPNS approval.txt cert
sign TEST_operator1_ed25519 $OPNS approval_force0.txt operator1
sign TEST_operator1_ed25519 $OPNS approval_other_action.txt operator1
sign TEST_operator1_ed25519 $OPNS approval_role_recovery.txt operator1
sign TEST_operator1_ed25519 $OPNS approval_25h.txt operator1
for f in trust_v2.txt trust_v2_recovery_swap.txt trust_v2_lockout.txt; do
  sign TEST_recovery1_ed25519 $RECNS $f recovery1
  sign TEST_recovery2_ed25519 $RECNS $f recovery2
done
sign TEST_recovery3_ed25519 $RECNS trust_v2_recovery_swap.txt recovery3
sign TEST_operator1_ed25519 $RECNS trust_v2.txt operator1.rotns
sign TEST_operator1_ed25519 $OPNS trust_v2.txt operator1
sign TEST_operator1_ed25519 $OPNS trust_v2_recovery_swap.txt operator1
sign TEST_recovery1_ed25519 $RECNS trust_v3.txt recovery1
sign TEST_recovery2_ed25519 $RECNS trust_v3.txt recovery2
printf 'desired-state document (any bytes)\n' > desired.txt
sign TEST_hub_ed25519 $HUBNS desired.txt hub
sign TEST_operator1_ed25519 $HUBNS desired.txt operator1

# sk signatures with chosen FIDO flags and hand-crafted malformed blobs.
python3 make-crafted.py blobs

# Damaged copies of a real signature.
head -n 3 approval.txt.operator1.sig > approval.txt.truncated.sig
echo '-----END SSH SIGNATURE-----' >> approval.txt.truncated.sig
python3 - <<'PY'
# Change base64 character 9 of the first line (inside the version field) -> undecodable blob.
lines = open("approval.txt.operator1.sig").read().split("\n")
c = lines[1][9]
lines[1] = lines[1][:9] + ("B" if c != "B" else "C") + lines[1][10:]
open("approval.txt.garbled.sig", "w").write("\n".join(lines))
PY
pub TEST_operator3_rsa3072.pub > revoked_keys
sed '1,/^signers:$/d' trust_v1.txt > allowed_signers_v1
echo "wrote $(ls | wc -l) files"
