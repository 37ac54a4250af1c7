#!/usr/bin/env bash
# Runs the INSTALLED drover.service under a real systemd against the PVE simulator, with every
# sandbox setting of the packaged unit in force: ExecStartPre check-config through the
# LoadCredential'd token, READY=1, watchdog pings, convergence, `drover status` over the
# control socket, metrics, a destroy approved with a TEST-key signature, and a clean stop.
#
# Containers and CI machines rarely boot systemd, so this starts a private systemd as PID 1 of
# a new pid + mount namespace (it sees the host's file systems, but its /run and mounts are
# its own). The only changes to the unit are a drop-in with DefaultDependencies=no (the
# private systemd boots nothing else) and file output instead of the journal.
#
# Needs root with CAP_SYS_ADMIN, the drover package installed, ssh-keygen, curl, and a
# disposable machine: it writes /etc/drover/{pve-token,trust,desired} and /etc/systemd/system
# files and removes them afterwards. Run by .ci/deploy-checks with
# DROVER_DEPLOY_INSTALL_TEST=1.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
sim_pid=""
sd_pid=""
cg_dirs=()
cleanup() {
    set +e
    [ -n "$sd_pid" ] && kill -KILL "$sd_pid" 2>/dev/null
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
    sleep 0.5
    rm -rf /etc/systemd/system/drover-unittest.target /etc/systemd/system/drover.service.d/unittest.conf
    rmdir /etc/systemd/system/drover.service.d 2>/dev/null
    rm -rf /etc/drover/pve-token /etc/drover/trust /etc/drover/desired
    [ -f "$work/drover.toml.orig" ] && cp "$work/drover.toml.orig" /etc/drover/drover.toml
    for d in "${cg_dirs[@]}"; do
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "test-unit-systemd.sh: FAILED: $*" >&2
    [ -f "$work/drover.out" ] && sed 's/^/  drover: /' "$work/drover.out" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root"
if [ ! -x /usr/bin/drover ] || [ ! -f /usr/lib/systemd/system/drover.service ]; then
    fail "install the drover package first"
fi
for t in unshare nsenter ssh-keygen curl; do
    command -v "$t" >/dev/null || fail "needs $t"
done
for f in /etc/drover/pve-token /etc/drover/trust /etc/drover/desired; do
    [ ! -e "$f" ] || fail "$f exists: this test only runs on a machine without a configured drover"
done

# The simulator stands in for pveproxy; the agent pins its certificate by fingerprint.
setsid /usr/bin/drover sim --listen 127.0.0.1:18006 --seed-demo > "$work/sim.log" 2>&1 < /dev/null &
sim_pid=$!
for _ in $(seq 50); do
    grep -q '^fingerprint ' "$work/sim.log" && break
    sleep 0.1
done
fp=$(sed -n 's/^fingerprint //p' "$work/sim.log")
[ -n "$fp" ] || fail "the simulator did not start: $(cat "$work/sim.log")"
secret=$(grep -o 'DEFAULT_TOKEN_SECRET: &str = "[^"]*"' "$repo/pve-sim/src/lib.rs" | cut -d'"' -f2)
token_id=$(grep -o 'DEFAULT_TOKEN_ID: &str = "[^"]*"' "$repo/pve-sim/src/lib.rs" | cut -d'"' -f2)

# Configuration as an operator would write it (README steps 2-3), pointed at the simulator.
cp /etc/drover/drover.toml "$work/drover.toml.orig"
install -m 0600 -o root -g root /dev/null /etc/drover/pve-token
printf '%s\n' "$secret" > /etc/drover/pve-token
cp "$repo/testdata/demo/trust" /etc/drover/trust
mkdir -p /etc/drover/desired
printf 'revision = 1\n[[guest]]\nvmid = 101\nensure = "running"\n[[guest]]\nvmid = 102\nensure = "running"\n' \
    > /etc/drover/desired/desired.toml
sed -e 's/^fleet = "example"/fleet = "demo"/' \
    -e 's|^url = "https://localhost:8006"|url = "https://127.0.0.1:18006"|' \
    -e "s/^token_id = .*/token_id = \"$token_id\"/" \
    -e "0,/^#fingerprint = .*/s//fingerprint = \"$fp\"/" \
    -e 's/^interval = "30s"/interval = "2s"/' \
    -e 's/^#listen = .*/listen = "127.0.0.1:19731"/' "$repo/deploy/drover.toml" > /etc/drover/drover.toml

printf '[Unit]\nDescription=drover unit test\nDefaultDependencies=no\n' > /etc/systemd/system/drover-unittest.target
mkdir -p /etc/systemd/system/drover.service.d
printf '[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:%s/drover.out\nStandardError=append:%s/drover.out\n' \
    "$work" "$work" > /etc/systemd/system/drover.service.d/unittest.conf
: > "$work/drover.out"

# A cgroup of its own for the private systemd (v1 "name=systemd" + v2, or pure v2).
procs=()
if [ -d /sys/fs/cgroup/systemd ]; then
    cg_dirs+=(/sys/fs/cgroup/systemd/drover-unittest)
    [ -d /sys/fs/cgroup/unified ] && cg_dirs+=(/sys/fs/cgroup/unified/drover-unittest)
else
    cg_dirs+=(/sys/fs/cgroup/drover-unittest)
fi
for d in "${cg_dirs[@]}"; do
    mkdir -p "$d"
    procs+=("$d/cgroup.procs")
done
# shellcheck disable=SC2016 # $$ and "$@" belong to the inner sh
setsid sh -c 'for p in "$@"; do echo $$ > "$p"; done; exec unshare --pid --fork --mount --propagation private --mount-proc env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --unit=drover-unittest.target --log-target=kmsg --show-status=no' \
    sh "${procs[@]}" > "$work/systemd.log" 2>&1 < /dev/null &
for _ in $(seq 50); do
    sd_pid=$(pgrep -f '^/lib/systemd/systemd --unit=drover-unittest' || true)
    [ -n "$sd_pid" ] && break
    sleep 0.1
done
[ -n "$sd_pid" ] || fail "the private systemd did not start: $(cat "$work/systemd.log")"
ns() { nsenter -t "$sd_pid" -p -m "$@"; }
for _ in $(seq 100); do
    state=$(ns systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 0.1
done
# A booted host has a shared root mount (credentials are set up through it); a systemd that
# believes it is in a container does not make it shared, so do it here, inside the namespace.
ns mount --make-rshared /
ns systemctl mask --runtime network-online.target > /dev/null 2>&1
ns systemctl daemon-reload

show() { ns systemctl show drover.service -p "$1" --value; }
ns systemctl start drover.service || fail "systemctl start drover failed"
[ "$(show ActiveState)" = active ] || fail "not active after start: $(show ActiveState)"
echo "ok   started: ExecStartPre check-config passed, READY=1 received ($(show StatusText))"

# The simulator's guests exist already and Drover did not create them: nothing on them changes
# until they are adopted. Both adopt requests are signed with one ssh-keygen call.
install -m 0600 "$repo/testdata/demo/TEST_demo_operator_ed25519" "$work/key"
for _ in $(seq 60); do
    [ -f /var/lib/drover/approvals/pending/101-adopt.txt ] &&
        [ -f /var/lib/drover/approvals/pending/102-adopt.txt ] && break
    sleep 0.5
done
[ -f /var/lib/drover/approvals/pending/102-adopt.txt ] || fail "no adopt requests appeared"
cp /var/lib/drover/approvals/pending/101-adopt.txt /var/lib/drover/approvals/pending/102-adopt.txt "$work/"
ssh-keygen -q -Y sign -f "$work/key" -n destructive-op-v1@demo.drover.invalid \
    "$work/101-adopt.txt" "$work/102-adopt.txt"
for v in 101 102; do
    ns drover approve "$work/$v-adopt.txt" "$work/$v-adopt.txt.sig" | grep -q 'submitted to the running agent' ||
        fail "drover approve (adopt $v)"
done
echo "ok   existing guests adopted (two requests, one ssh-keygen call)"

ok=0
for _ in $(seq 60); do
    if [ "$(show StatusText)" = "rev 1: 2 converged, 0 pending, 0 awaiting approval, 0 failed" ]; then
        ok=1
        break
    fi
    sleep 0.5
done
[ $ok = 1 ] || fail "did not converge: $(show StatusText)"
echo "ok   converged: $(show StatusText)"
[ -n "$(show WatchdogTimestamp)" ] || fail "no watchdog ping"
echo "ok   watchdog: WatchdogUSec=$(show WatchdogUSec), last ping $(show WatchdogTimestamp)"

pid=$(show MainPID)
status=$(ns cat "/proc/$pid/status")
grep -q $'^Uid:\t'"$(id -u drover)"$'\t' <<< "$status" || fail "not running as drover"
grep -q $'^CapEff:\t0000000000000000' <<< "$status" || fail "has capabilities"
grep -q $'^NoNewPrivs:\t1' <<< "$status" || fail "NoNewPrivs not set"
grep -q $'^Seccomp:\t2' <<< "$status" || fail "no seccomp filter"
grep -q "^Groups:.*\b$(getent group www-data | cut -d: -f3)\b" <<< "$status" || fail "not in www-data"
ns cat "/proc/$pid/limits" | grep -q "^Max open files *16384 " || fail "LimitNOFILE not applied"
echo "ok   process: uid drover, groups $(grep '^Groups:' <<< "$status" | cut -f2), no capabilities, NoNewPrivs, seccomp"

[ "$(ns stat -c '%a %U:%G' /run/drover/drover.sock)" = "660 drover:drover" ] || fail "socket mode"
[ "$(ns stat -c '%a %U:%G' /var/lib/drover)" = "700 drover:drover" ] || fail "state dir mode"
ns drover status > "$work/status.out" || fail "drover status: $(cat "$work/status.out")"
echo "ok   drover status over /run/drover/drover.sock (660 drover:drover)"
curl -sf 127.0.0.1:19731/metrics | grep -q '^drover_guests{state="converged"} 2' || fail "metrics"
echo "ok   metrics on 127.0.0.1:19731"

# A destroy: held for approval, signed offline with the TEST operator key, submitted.
printf 'revision = 2\n[[guest]]\nvmid = 101\nensure = "running"\n[[guest]]\nvmid = 102\nensure = "absent"\n' \
    > /etc/drover/desired/desired.toml
req=/var/lib/drover/approvals/pending/102-destroy_guest.txt
for _ in $(seq 60); do
    [ -f "$req" ] && break
    sleep 0.5
done
[ -f "$req" ] || fail "no approval request appeared"
ns drover approvals > "$work/approvals.out" && fail "drover approvals should exit 2"
grep -q 'destructive-op-v1@demo.drover.invalid' "$work/approvals.out" || fail "no sign command"
cp "$req" "$work/"
ssh-keygen -q -Y sign -f "$work/key" -n destructive-op-v1@demo.drover.invalid "$work/102-destroy_guest.txt"
/usr/bin/drover --config /etc/drover/drover.toml verify-approval "$work/102-destroy_guest.txt" \
    "$work/102-destroy_guest.txt.sig" | grep -q '^ok: signed by' || fail "verify-approval"
ns drover approve "$work/102-destroy_guest.txt" "$work/102-destroy_guest.txt.sig" | grep -q 'submitted to the running agent' ||
    fail "drover approve"
ok=0
for _ in $(seq 60); do
    if [ "$(show StatusText)" = "rev 2: 2 converged, 0 pending, 0 awaiting approval, 0 failed" ]; then
        ok=1
        break
    fi
    sleep 0.5
done
[ $ok = 1 ] || fail "the approved destroy did not converge: $(show StatusText)"
grep -q 'vzdestroy:102' "$work/drover.out" || fail "no destroy task in the log"
echo "ok   destroy held, signed, verified, approved over the socket and run"

ns systemctl stop drover.service
[ "$(show Result)" = success ] || fail "stop result $(show Result)"
grep -q 'stopping: no new steps' "$work/drover.out" || fail "no orderly stop"
[ "$(show NRestarts)" = 0 ] || fail "the service restarted $(show NRestarts) times"
echo "ok   stopped cleanly (Result=success, no restarts)"
echo "test-unit-systemd.sh: all checks passed"
