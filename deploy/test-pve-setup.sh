#!/usr/bin/env bash
# Tests deploy/pve-setup.sh against a fake `pveum` that keeps users, roles, tokens and ACLs in
# files and logs every call: dry-run output, a first run, idempotent re-runs, drift repair,
# token rotation, a lost secret, the options, a two-node cluster (one token per node, rotation
# that touches only its own node) and --pool. The fake's state is the cluster-wide user.cfg;
# each simulated node has its own secret file. Run by .ci/deploy-checks; needs root (the
# script chowns the secret file) and nothing from Proxmox.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
setup="$here/pve-setup.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$(id -u)" != 0 ]; then
    echo "test-pve-setup.sh: needs root (pve-setup.sh refuses to run otherwise)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# The fake pveum. State: $STUB_STATE/{users,tokens,acl,pools,counter,role.NAME}; log: $STUB_LOG.
mkdir -p "$work/bin"
cat > "$work/bin/pveum" <<'STUB'
#!/bin/sh
set -eu
S=$STUB_STATE
echo "pveum $*" >> "$STUB_LOG"
touch "$S/users" "$S/tokens" "$S/acl" "$S/pools"
fail() { echo "$*" >&2; exit 255; }
json_list() { # key file
    first=1; printf '['
    while IFS= read -r v; do
        [ -n "$v" ] || continue
        [ $first = 1 ] || printf ','
        first=0
        printf '{"%s":"%s","comment":"x"}' "$1" "$v"
    done < "$2"
    printf ']\n'
}
case "$1 $2" in
"user list") json_list userid "$S/users" ;;
"user add")
    grep -qx "$3" "$S/users" && fail "create user failed: user '$3' already exists"
    echo "$3" >> "$S/users" ;;
"role list")
    ls "$S" | sed -n 's/^role\.//p' > "$S/roles.tmp"
    json_list roleid "$S/roles.tmp" ;;
"role add")
    [ -e "$S/role.$3" ] && fail "role '$3' already exists"
    [ "$4" = --privs ] || fail "usage"
    echo "$5" > "$S/role.$3" ;;
"role modify")
    [ -e "$S/role.$3" ] || fail "role '$3' does not exist"
    [ "$4" = --privs ] || fail "usage"
    echo "$5" > "$S/role.$3" ;;
"user token")
    case $3 in
    list)
        grep -qx "$4" "$S/users" || fail "no such user ('$4')"
        grep "^$4!" "$S/tokens" | cut -d'!' -f2 > "$S/tok.tmp" || true
        json_list tokenid "$S/tok.tmp" ;;
    add)
        grep -qx "$4" "$S/users" || fail "no such user ('$4')"
        grep -qx "$4!$5" "$S/tokens" && fail "Token already exists."
        echo "$4!$5" >> "$S/tokens"
        n=$(( $(cat "$S/counter" 2>/dev/null || echo 0) + 1 )); echo $n > "$S/counter"
        printf '{"full-tokenid":"%s","info":{"privsep":"1","comment":"drover agent"},"value":"secret-%s"}\n' "$4!$5" "$n" ;;
    remove)
        grep -qx "$4!$5" "$S/tokens" || fail "no such token '$5' for user '$4'"
        grep -vx "$4!$5" "$S/tokens" > "$S/tokens.tmp" || true; mv "$S/tokens.tmp" "$S/tokens"
        # PVE drops the token's ACL entries with the token.
        grep -v " token:$4!$5\$" "$S/acl" > "$S/acl.tmp" || true; mv "$S/acl.tmp" "$S/acl" ;;
    *) fail "unknown: $*" ;;
    esac ;;
"acl modify")
    path=$3; shift 3; roles=""; users=""; tokens=""; prop=1
    while [ $# -gt 0 ]; do
        case $1 in
        --roles) roles=$2 ;; --users) users=$2 ;; --tokens) tokens=$2 ;; --propagate) prop=$2 ;;
        *) fail "acl: unknown option $1" ;;
        esac; shift 2
    done
    [ -n "$roles" ] || fail "acl: no roles"
    case $path in
    /pool/*) grep -qx "${path#/pool/}" "$S/pools" || fail "pool '${path#/pool/}' does not exist" ;;
    esac
    for r in $(echo "$roles" | tr , ' '); do
        [ -e "$S/role.$r" ] || fail "role '$r' does not exist"
        for u in $(echo "$users" | tr , ' '); do
            grep -qx "$u" "$S/users" || fail "user '$u' does not exist"
            echo "$path $r $prop user:$u" >> "$S/acl"
        done
        for t in $(echo "$tokens" | tr , ' '); do
            grep -qx "$t" "$S/tokens" || fail "token '$t' does not exist"
            echo "$path $r $prop token:$t" >> "$S/acl"
        done
    done
    sort -u "$S/acl" -o "$S/acl" ;;
"pool list") json_list poolid "$S/pools" ;;
"pool add")
    grep -qx "$3" "$S/pools" && fail "pool '$3' already exists"
    echo "$3" >> "$S/pools" ;;
"acl list")
    # path role propagate type:ugid -> PVE's JSON (compact, as --output-format json prints it)
    first=1; printf '['
    while read -r path role prop who; do
        [ $first = 1 ] || printf ','
        first=0
        printf '{"path":"%s","propagate":%s,"roleid":"%s","type":"%s","ugid":"%s"}' \
            "$path" "$prop" "$role" "${who%%:*}" "${who#*:}"
    done < "$S/acl"
    printf ']\n' ;;
*) fail "fake pveum: unsupported: $*" ;;
esac
STUB
chmod +x "$work/bin/pveum"

export STUB_STATE="$work/state" STUB_LOG="$work/pveum.log"
mkdir -p "$STUB_STATE"
secret="$work/etc/pve-token"
# Exactly what the agent uses (agent/src/reconcile/privileges.rs GRANTED).
PRIVS="VM.Audit,VM.PowerMgmt,VM.Allocate,VM.Config.CPU,VM.Config.Memory,VM.Config.Network,VM.Config.Disk,VM.Config.Options,VM.Backup,VM.Snapshot,VM.Snapshot.Rollback,Datastore.AllocateSpace,Datastore.Audit,SDN.Use,Sys.Audit"
NODE=pve1

failures=0
pass() { printf 'ok   %s\n' "$1"; }
fail() {
    printf 'FAIL %s\n' "$1"
    failures=$((failures + 1))
}
check() { # name, command...
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# Runs pve-setup.sh on node $NODE (secret file $secret) with the stub first on PATH; output
# in $work/out, exit code in $rc.
run() {
    : > "$STUB_LOG"
    set +e
    PATH="$work/bin:$PATH" sh "$setup" --node "$NODE" --secret-file "$secret" "$@" > "$work/out" 2>&1
    rc=$?
    set -e
}
out_has() { grep -qF -- "$1" "$work/out"; }
log_has() { grep -qF -- "$1" "$STUB_LOG"; }
acl_has() { grep -qx -- "$1" "$STUB_STATE/acl"; }
dump() { printf -- '--- output:\n%s\n--- pveum calls:\n%s\n' "$(cat "$work/out")" "$(cat "$STUB_LOG")"; }

# --- help and bad options --------------------------------------------------------------------
run --help
check "--help exits 0 and prints usage" test "$rc" = 0 -a -n "$(grep -F 'Usage: pve-setup.sh' "$work/out")"
run --bogus
check "an unknown option exits 2" test "$rc" = 2
run --secret-file relative/path
check "a relative --secret-file is refused" test "$rc" = 1
run --storage 'bad/name'
check "a storage name with a slash is refused" test "$rc" = 1

# --- dry run without pveum at all ------------------------------------------------------------
: > "$STUB_LOG"
set +e
PATH="/usr/bin:/bin" sh "$setup" --dry-run --node pve1 --secret-file "$secret" > "$work/out" 2>&1
rc=$?
set -e
check "dry run without pveum exits 0" test "$rc" = 0
check "dry run without pveum says so" out_has "pveum not found: assuming nothing exists yet"
check "dry run without pveum still lists the commands" out_has "would run: pveum user add drover@pve"

# --- dry run on a fresh node -----------------------------------------------------------------
run --dry-run
check "fresh dry run exits 0" test "$rc" = 0
check "fresh dry run: only read-only pveum calls" test -z "$(grep -v -e '^pveum user list' -e '^pveum role list' "$STUB_LOG")"
check "fresh dry run: would add the user" out_has "would run: pveum user add drover@pve --comment"
check "fresh dry run: would add the role with exactly the §1.4 privileges" out_has "would run: pveum role add Drover --privs $PRIVS"
check "fresh dry run: would add a privsep token" out_has "would run: pveum user token add drover@pve pve1 --privsep 1"
for p in /vms /storage/local /storage/local-lvm /sdn/zones/localnetwork/vmbr0 /nodes/pve1; do
    check "fresh dry run: ACL on $p for user and token" out_has "would run: pveum acl modify $p --roles Drover --users drover@pve --tokens 'drover@pve!pve1'"
done
check "fresh dry run: no secret file" test ! -e "$secret"
check "fresh dry run: nothing created" test ! -s "$STUB_STATE/users"

# --- first real run --------------------------------------------------------------------------
run
[ "$rc" = 0 ] || dump
check "first run exits 0" test "$rc" = 0
check "first run: user created" grep -qx "drover@pve" "$STUB_STATE/users"
check "first run: role has exactly the privileges" test "$(cat "$STUB_STATE/role.Drover" 2>/dev/null)" = "$PRIVS"
check "first run: token created" grep -qx "drover@pve!pve1" "$STUB_STATE/tokens"
check "first run: privsep 1" log_has "pveum user token add drover@pve pve1 --privsep 1"
check "first run: secret written" test "$(cat "$secret" 2>/dev/null)" = "secret-1"
check "first run: secret mode 0600 root:root" test "$(stat -c '%a %U:%G' "$secret")" = "600 root:root"
check "first run: the secret is not printed" test -z "$(grep -F 'secret-1' "$work/out")"
for p in /vms /storage/local /storage/local-lvm /sdn/zones/localnetwork/vmbr0 /nodes/pve1; do
    check "first run: $p for the user" acl_has "$p Drover 1 user:drover@pve"
    check "first run: $p for the token" acl_has "$p Drover 1 token:drover@pve!pve1"
done
check "first run: no ACL on /" test -z "$(grep '^/ ' "$STUB_STATE/acl")"
check "first run: the role never holds Datastore.Allocate" test -z "$(tr ',' '\n' < "$STUB_STATE/role.Drover" | grep -x 'Datastore.Allocate')"
check "first run without --safety-storage says destructive steps are refused" out_has "safety_storage_unset"

# --- second run: nothing new -----------------------------------------------------------------
run
check "second run exits 0" test "$rc" = 0
check "second run: no user add" test -z "$(grep -F 'user add' "$STUB_LOG")"
check "second run: no role add" test -z "$(grep -F 'role add' "$STUB_LOG")"
check "second run: role re-asserted with modify" log_has "pveum role modify Drover --privs $PRIVS"
check "second run: no token add/remove" test -z "$(grep -F -e 'token add' -e 'token remove' "$STUB_LOG")"
check "second run: secret unchanged" test "$(cat "$secret")" = "secret-1"
check "second run: says it keeps the token" out_has "keeping both"

# --- a role that drifted is put back ---------------------------------------------------------
echo "VM.Audit,Sys.Modify" > "$STUB_STATE/role.Drover"
run
check "drifted role: exits 0" test "$rc" = 0
check "drifted role: privileges restored exactly" test "$(cat "$STUB_STATE/role.Drover")" = "$PRIVS"

# --- dry run when everything exists ----------------------------------------------------------
run --dry-run
check "existing dry run exits 0" test "$rc" = 0
check "existing dry run: no user/token add" test -z "$(grep -F -e 'user add' -e 'token add' "$work/out")"
check "existing dry run: would modify the role" out_has "would run: pveum role modify Drover --privs $PRIVS"
check "existing dry run: only read-only pveum calls" test -z "$(grep -v -e ' list' "$STUB_LOG")"

# --- rotation --------------------------------------------------------------------------------
run --rotate-token
check "rotate: exits 0" test "$rc" = 0
check "rotate: old token removed" log_has "pveum user token remove drover@pve pve1"
check "rotate: new secret written" test "$(cat "$secret")" = "secret-2"
check "rotate: token ACLs re-created" acl_has "/vms Drover 1 token:drover@pve!pve1"
check "rotate: remove comes before add" test "$(grep -n -e 'token remove' "$STUB_LOG" | cut -d: -f1)" -lt "$(grep -n -e 'token add' "$STUB_LOG" | cut -d: -f1)"

# --- the secret file was lost ----------------------------------------------------------------
rm -f "$secret"
run
check "lost secret: exits 1" test "$rc" = 1
check "lost secret: points at --rotate-token" out_has "--rotate-token"
check "lost secret: no new token" test -z "$(grep -F 'token add' "$STUB_LOG")"
run --dry-run
check "lost secret, dry run: exits 0 and warns" test "$rc" = 0 -a -n "$(grep -F 'is missing' "$work/out")"
run --rotate-token
check "lost secret: --rotate-token recovers" test "$rc" = 0 -a "$(cat "$secret" 2>/dev/null)" = "secret-3"

# --- options ---------------------------------------------------------------------------------
run --storage local-zfs,nfs-templates --bridge vmbr1 --with-sys-modify
check "options: exits 0" test "$rc" = 0
check "options: ACL on the extra storages" acl_has "/storage/nfs-templates Drover 1 token:drover@pve!pve1"
check "options: ACL on the extra bridge" acl_has "/sdn/zones/localnetwork/vmbr1 Drover 1 user:drover@pve"
check "options: Sys.Modify role" test "$(cat "$STUB_STATE/role.DroverSysModify" 2>/dev/null)" = "Sys.Modify"
check "options: Sys.Modify on / only, not propagated" acl_has "/ DroverSysModify 0 token:drover@pve!pve1"
rm -rf "${STUB_STATE:?}"/* "$secret"
run --no-sdn
check "--no-sdn: exits 0" test "$rc" = 0
check "--no-sdn: no SDN.Use" test "$(cat "$STUB_STATE/role.Drover")" = "${PRIVS/,SDN.Use/}"
check "--no-sdn: no /sdn ACL" test -z "$(grep '^/sdn' "$STUB_STATE/acl")"

# --- bad names ------------------------------------------------------------------------------
run --node 1pve
check "a node name starting with a digit: refused" test "$rc" = 1
check "a node name starting with a digit: points at --token-name" out_has "--token-name"
run --node 1pve --token-name n1pve --dry-run
check "... and --token-name fixes it" test "$rc" = 0 -a -n "$(grep -F "tokens 'drover@pve!n1pve'" "$work/out")"
run --secret-file /etc/pve/priv/drover-token
check "a secret file under /etc/pve (shared by the cluster) is refused" test "$rc" = 1

# --- a two-node cluster ----------------------------------------------------------------------
# user.cfg (the fake's state) is shared; each node has its own /etc/drover/pve-token.
rm -rf "${STUB_STATE:?}"/* "$secret"
secret1=$secret
secret2="$work/etc-pve2/pve-token"
NODE=pve1 secret=$secret1 run
check "cluster: pve1 first run exits 0" test "$rc" = 0
NODE=pve2 secret=$secret2 run
[ "$rc" = 0 ] || dump
check "cluster: pve2 runs too (was: token exists but the secret is missing)" test "$rc" = 0
check "cluster: pve2 gets its own token" grep -qx "drover@pve!pve2" "$STUB_STATE/tokens"
check "cluster: pve1's token stays" grep -qx "drover@pve!pve1" "$STUB_STATE/tokens"
check "cluster: pve2 wrote its own secret" test "$(cat "$secret2" 2>/dev/null)" = "secret-2"
check "cluster: pve1's secret unchanged" test "$(cat "$secret1")" = "secret-1"
check "cluster: pve2 adds no user and no role" test -z "$(grep -F -e 'user add' -e 'role add' "$STUB_LOG")"
check "cluster: pve2's token on /vms" acl_has "/vms Drover 1 token:drover@pve!pve2"
check "cluster: pve2's token on /nodes/pve2" acl_has "/nodes/pve2 Drover 1 token:drover@pve!pve2"
check "cluster: pve1's token not on /nodes/pve2" test -z "$(grep -Fx "/nodes/pve2 Drover 1 token:drover@pve!pve1" "$STUB_STATE/acl")"
check "cluster: pve2's token not on /nodes/pve1" test -z "$(grep -Fx "/nodes/pve1 Drover 1 token:drover@pve!pve2" "$STUB_STATE/acl")"
check "cluster: pve2 prints its own token id" out_has 'token_id = "drover@pve!pve2"'
NODE=pve2 secret=$secret2 run
check "cluster: pve2 again: nothing new" test "$rc" = 0 -a -z "$(grep -F -e 'token add' -e 'token remove' "$STUB_LOG")"
NODE=pve1 secret=$secret1 run
check "cluster: pve1 again: nothing new" test "$rc" = 0 -a -z "$(grep -F -e 'token add' -e 'token remove' "$STUB_LOG")"
NODE=pve2 secret=$secret2 run --rotate-token
check "cluster: rotate on pve2 exits 0" test "$rc" = 0
check "cluster: rotate on pve2 removes only pve2's token" test "$(grep -F 'token remove' "$STUB_LOG")" = "pveum user token remove drover@pve pve2"
check "cluster: rotate on pve2: new pve2 secret" test "$(cat "$secret2")" = "secret-3"
check "cluster: rotate on pve2: pve1's token, ACLs and secret intact" \
    test -n "$(grep -x "drover@pve!pve1" "$STUB_STATE/tokens")" -a "$(cat "$secret1")" = "secret-1" \
    -a -n "$(grep -Fx "/vms Drover 1 token:drover@pve!pve1" "$STUB_STATE/acl")" \
    -a -n "$(grep -Fx "/nodes/pve1 Drover 1 token:drover@pve!pve1" "$STUB_STATE/acl")"
check "cluster: rotate on pve2: pve2's ACLs re-created" acl_has "/nodes/pve2 Drover 1 token:drover@pve!pve2"
rm -f "$secret2"
NODE=pve2 secret=$secret2 run
check "cluster: pve2 lost its secret: stops, says only this node's token is replaced" test "$rc" = 1 -a -n "$(grep -F 'only this node' "$work/out")"
# The shared token of an older pve-setup.sh is pointed out, never removed.
echo 'drover@pve!drover' >> "$STUB_STATE/tokens"
NODE=pve1 secret=$secret1 run
check "cluster: the old shared token is pointed out" out_has "pveum user token remove drover@pve drover"
check "cluster: ... and kept" grep -qx 'drover@pve!drover' "$STUB_STATE/tokens"

# --- --pool ----------------------------------------------------------------------------------
rm -rf "${STUB_STATE:?}"/* "$secret1" "$secret2"
run --pool drover-guests
[ "$rc" = 0 ] || dump
check "pool: exits 0" test "$rc" = 0
check "pool: the pool is created" log_has "pveum pool add drover-guests"
check "pool: role on /pool/drover-guests for the user" acl_has "/pool/drover-guests Drover 1 user:drover@pve"
check "pool: role on /pool/drover-guests for the token" acl_has "/pool/drover-guests Drover 1 token:drover@pve!pve1"
check "pool: nothing on /vms" test -z "$(grep '^/vms ' "$STUB_STATE/acl")"
check "pool: storages and the node as before" acl_has "/nodes/pve1 Drover 1 token:drover@pve!pve1"
check "pool: says what drover.toml needs" out_has 'pool = "drover-guests"'
run --pool drover-guests
check "pool: again: the pool is kept" test "$rc" = 0 -a -z "$(grep -F 'pool add' "$STUB_LOG")"
check "pool: again: no note about /vms" test -z "$(grep -F 'still holds' "$work/out")"
rm -rf "${STUB_STATE:?}"/* "$secret"
run
run --pool drover-guests
check "pool after /vms: the old /vms grant is pointed out" out_has "pveum acl delete /vms --roles Drover --tokens 'drover@pve!pve1'"
run --pool 'bad/pool'
check "pool: a bad pool name is refused" test "$rc" = 1

# --- --safety-storage: the role on that storage too, and nothing more ---------------------------
run --safety-storage safety
check "--safety-storage exits 0" test "$rc" = 0
check "--safety-storage: /storage/safety for the token" acl_has "/storage/safety Drover 1 token:drover@pve!pve1"
check "--safety-storage: /storage/safety for the user" acl_has "/storage/safety Drover 1 user:drover@pve"
check "--safety-storage: the role is unchanged" test "$(cat "$STUB_STATE/role.Drover" 2>/dev/null)" = "$PRIVS"
check "--safety-storage: no refusal note" test -z "$(grep -F 'safety_storage_unset' "$work/out")"
run --safety-storage 'bad/name'
check "a safety storage name with a slash is refused" test "$rc" = 1

if [ "$failures" != 0 ]; then
    echo "test-pve-setup.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "test-pve-setup.sh: all checks passed"
