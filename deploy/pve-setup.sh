#!/bin/sh
# pve-setup.sh: give the Drover agent its own least-privilege PVE identity.
#
# Creates (or brings up to date) on a Proxmox VE node:
#   * the user drover@pve (no password: it cannot log in, only its token is used);
#   * the role Drover with exactly the privileges the agent uses (the list is
#     agent/src/reconcile/privileges.rs GRANTED; a test keeps the two equal);
#   * a privilege-separated API token for THIS node, drover@pve!<node>, whose secret is
#     written to /etc/drover/pve-token (0600 root:root; systemd hands it to the service with
#     LoadCredential=);
#   * ACLs for the user AND the token (with privilege separation the token's rights are the
#     intersection of both) on /vms (or /pool/<pool> with --pool), /storage/<storage>,
#     /sdn/zones/localnetwork/<bridge> and /nodes/<node>.
#
# In a cluster, users, roles, tokens and ACLs live in the cluster-wide /etc/pve/user.cfg but
# the secret file is per node: run the script once on every node. Each node gets its own
# token, so a node's --rotate-token (or a lost secret) never touches another node.
#
# Idempotent: run it again after changing storages or bridges. An existing token is kept (its
# secret cannot be read back) unless --rotate-token is given. --dry-run prints the pveum
# commands that would change something, without running them.

set -eu

USER_ID="drover@pve"
TOKEN_NAME=""
ROLE="Drover"
SYS_ROLE="DroverSysModify"
SECRET_FILE="/etc/drover/pve-token"
NODE=""
POOL=""
STORAGES=""
SAFETY_STORAGE=""
BRIDGES=""
SDN=1
SYS_MODIFY=0
ROTATE=0
DRY_RUN=0

# Exactly what the agent uses (agent/src/reconcile/privileges.rs GRANTED, same order; the
# test pve_setup_sh_grants_exactly_this_list fails when the two differ):
#   VM.Audit                      list/read guests, config, status, pending
#   VM.PowerMgmt                  start/stop/shutdown/reboot
#   VM.Allocate                   create/destroy
#   VM.Config.CPU/Memory/Network/Disk/Options   PUT config per key, resize
#   VM.Backup                     safety copies before destructive steps and backup jobs
#                                 (vzdump, extractconfig, protecting/deleting Drover's own
#                                 backups), restore over a guest
#   VM.Snapshot                   snapshot / delete_snapshot jobs, snapshot safety copies
#   VM.Snapshot.Rollback          rollback_snapshot jobs
#   Datastore.AllocateSpace, Datastore.Audit    new volumes, template storage read access,
#                                 writing and releasing safety copies on --safety-storage
#   (never Datastore.Allocate: it would let the token delete any volume and any backup)
#   SDN.Use                       net[n] on a bridge (/sdn/zones/localnetwork/<bridge>)
#   Sys.Audit                     read tasks on /nodes/<node>
PRIVS_BASE="VM.Audit VM.PowerMgmt VM.Allocate VM.Config.CPU VM.Config.Memory VM.Config.Network VM.Config.Disk VM.Config.Options VM.Backup VM.Snapshot VM.Snapshot.Rollback Datastore.AllocateSpace Datastore.Audit"
PRIV_SDN="SDN.Use"
PRIV_SYS_AUDIT="Sys.Audit"

usage() {
    cat <<'EOF'
Usage: pve-setup.sh [options]

Sets up the PVE user, role, API token and ACLs for the Drover agent on this node, and
writes the token secret for the drover service. Run as root on the PVE node.

Options:
  --node NAME          PVE node name for /nodes/<node> and the token name (default:
                       short hostname)
  --pool POOL          grant the guest privileges on the pool /pool/POOL (created if
                       missing) instead of on /vms, which covers every guest of the
                       cluster, QEMU included; set [proxmox] pool = "POOL" in drover.toml
                       so the guests the agent creates join the pool
  --storage NAME       storage the agent may allocate on and read templates from
                       (repeatable or comma-separated; default: local,local-lvm)
  --safety-storage NAME
                       the storage (content "backup") for the safety copies Drover takes
                       before destructive steps; the role is granted there too
                       (Datastore.AllocateSpace writes and releases the copies; never
                       Datastore.Allocate). Set [safety] storage = "NAME" in drover.toml
  --bridge NAME        bridge guests' net[n] may use (repeatable or comma-separated;
                       default: vmbr0)
  --no-sdn             PVE before 8: no SDN.Use privilege and no /sdn ACLs
  --with-sys-modify    also grant Sys.Modify on / (role DroverSysModify, not propagated):
                       only for privileged containers or registered tags
  --user USERID        default: drover@pve
  --token-name NAME    default: the node name (one token per node: drover@pve!<node>)
  --role NAME          default: Drover
  --secret-file PATH   where the token secret goes (default: /etc/drover/pve-token)
  --rotate-token       replace this node's token (new secret); its ACLs are re-created.
                       Other nodes' tokens are not touched
  --dry-run            print the pveum commands that would change something, run none
                       (read-only `pveum ... list` queries still run when pveum exists)
  -h, --help           this text

Afterwards, /etc/drover/drover.toml needs:
  [proxmox]
  token_id = "drover@pve!<node>"
  token_secret_file = "pve-token"
  [safety]
  storage = "<the --safety-storage>"   # without it destructive steps are refused

In a cluster, run it on every node: each node gets its own token and secret.
EOF
}

die() {
    echo "pve-setup.sh: error: $*" >&2
    exit 1
}

# Adds comma- or space-separated names to a space-separated list.
add_names() {
    list=$1
    for n in $(printf '%s' "$2" | tr ',' ' '); do
        case $n in
            *[!A-Za-z0-9_.-]*) die "invalid name: $n" ;;
        esac
        list="$list $n"
    done
    printf '%s' "${list# }"
}

need_arg() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value (see --help)"
    fi
}

while [ $# -gt 0 ]; do
    case $1 in
        --node) need_arg "$@"; NODE=$2; shift 2 ;;
        --pool) need_arg "$@"; POOL=$2; shift 2 ;;
        --storage) need_arg "$@"; STORAGES=$(add_names "$STORAGES" "$2"); shift 2 ;;
        --safety-storage) need_arg "$@"; SAFETY_STORAGE=$(add_names "" "$2"); shift 2 ;;
        --bridge) need_arg "$@"; BRIDGES=$(add_names "$BRIDGES" "$2"); shift 2 ;;
        --no-sdn) SDN=0; shift ;;
        --with-sys-modify) SYS_MODIFY=1; shift ;;
        --user) need_arg "$@"; USER_ID=$2; shift 2 ;;
        --token-name) need_arg "$@"; TOKEN_NAME=$2; shift 2 ;;
        --role) need_arg "$@"; ROLE=$2; shift 2 ;;
        --secret-file) need_arg "$@"; SECRET_FILE=$2; shift 2 ;;
        --rotate-token) ROTATE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "pve-setup.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ -n "$STORAGES" ] || STORAGES="local local-lvm"
case " $STORAGES " in
    *" $SAFETY_STORAGE "*) ;;
    *) [ -z "$SAFETY_STORAGE" ] || STORAGES="$STORAGES $SAFETY_STORAGE" ;;
esac
[ -n "$BRIDGES" ] || BRIDGES="vmbr0"
[ -n "$NODE" ] || NODE=$(uname -n | cut -d. -f1)
[ -n "$TOKEN_NAME" ] || TOKEN_NAME=$NODE

case $USER_ID in
    *@*) ;;
    *) die "--user must be USER@REALM, got $USER_ID" ;;
esac
case $USER_ID$TOKEN_NAME$ROLE$NODE$POOL in
    *[!A-Za-z0-9@_.-]*) die "user, token name, role, node and pool may only contain A-Z a-z 0-9 @ _ . -" ;;
esac
# PVE's token name rule (pve-access-control: [A-Za-z][A-Za-z0-9.\-_]+).
case $TOKEN_NAME in
    [A-Za-z]?*) ;;
    *) die "token name \"$TOKEN_NAME\" must start with a letter and have at least 2 characters (node names starting with a digit need --token-name, e.g. --token-name n$TOKEN_NAME)" ;;
esac
case $SECRET_FILE in
    /etc/pve/*) die "--secret-file must not be under /etc/pve: that is shared by every node of the cluster, the secret belongs to this node" ;;
    /*) ;;
    *) die "--secret-file must be an absolute path" ;;
esac
if [ -n "$POOL" ]; then
    GUEST_PATH="/pool/$POOL"
else
    GUEST_PATH="/vms"
fi
TOKEN_ID="$USER_ID!$TOKEN_NAME"

PRIVS="$PRIVS_BASE"
[ "$SDN" = 1 ] && PRIVS="$PRIVS $PRIV_SDN"
PRIVS="$PRIVS $PRIV_SYS_AUDIT"
PRIVS_CSV=$(printf '%s' "$PRIVS" | tr ' ' ',')

HAVE_PVEUM=1
command -v pveum >/dev/null 2>&1 || HAVE_PVEUM=0
if [ "$DRY_RUN" = 0 ]; then
    [ "$HAVE_PVEUM" = 1 ] || die "pveum not found: run this on a Proxmox VE node (or use --dry-run)"
    [ "$(id -u)" = 0 ] || die "run as root (pveum and $SECRET_FILE need it)"
fi

# Prints a command the way a shell would read it back.
show() {
    out=""
    for a in "$@"; do
        case $a in
            *[!A-Za-z0-9@%+=:,./_-]*|'') a="'$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'" ;;
        esac
        out="$out $a"
    done
    printf '%s\n' "${out# }"
}

# Runs a command that changes something (printed first); only printed with --dry-run.
change() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run: '
        show "$@"
    else
        printf '+ '
        show "$@"
        "$@"
    fi
}

# Read-only query: its output, or nothing when pveum is missing in a dry run.
query() {
    [ "$HAVE_PVEUM" = 1 ] || return 0
    pveum "$@" --output-format json
}

# Splits pveum's JSON into one "key":value per line (the values involved hold no spaces,
# commas or braces), so it can be searched without jq.
json_lines() {
    printf '%s\n' "$1" | tr '{},' '[\n*3]' | tr -d ' \t\r'
}

# JSON from pveum ... list: does any entry have "key":"value"?
json_has() {
    json_lines "$1" | grep -Fqx "\"$2\":\"$3\""
}

if [ "$DRY_RUN" = 1 ] && [ "$HAVE_PVEUM" = 0 ]; then
    echo "# pveum not found: assuming nothing exists yet"
fi

# 1. The user.
users=$(query user list)
if json_has "$users" userid "$USER_ID"; then
    echo "user $USER_ID exists"
else
    change pveum user add "$USER_ID" --comment "Drover reconcile agent (API token only)"
fi

# 2. The role, with exactly these privileges (modify replaces the list).
roles=$(query role list)
if json_has "$roles" roleid "$ROLE"; then
    change pveum role modify "$ROLE" --privs "$PRIVS_CSV"
else
    change pveum role add "$ROLE" --privs "$PRIVS_CSV"
fi
if [ "$SYS_MODIFY" = 1 ]; then
    if json_has "$roles" roleid "$SYS_ROLE"; then
        change pveum role modify "$SYS_ROLE" --privs Sys.Modify
    else
        change pveum role add "$SYS_ROLE" --privs Sys.Modify
    fi
fi

# 2b. The pool the guests live in, with --pool.
if [ -n "$POOL" ]; then
    pools=$(query pool list)
    if json_has "$pools" poolid "$POOL"; then
        echo "pool $POOL exists"
    else
        change pveum pool add "$POOL" --comment "guests managed by Drover"
    fi
fi

# 3. This node's token. Its secret is shown once, at creation.
token_exists=0
tokens=""
if json_has "$users" userid "$USER_ID"; then
    tokens=$(query user token list "$USER_ID")
fi
if json_has "$tokens" tokenid "$TOKEN_NAME"; then
    token_exists=1
fi
create_token=1
if [ "$token_exists" = 1 ]; then
    if [ "$ROTATE" = 1 ]; then
        change pveum user token remove "$USER_ID" "$TOKEN_NAME"
    elif [ -s "$SECRET_FILE" ]; then
        echo "token $TOKEN_ID exists and $SECRET_FILE is present: keeping both (--rotate-token for a new secret)"
        create_token=0
    elif [ "$DRY_RUN" = 1 ]; then
        echo "# token $TOKEN_ID exists but $SECRET_FILE is missing: the real run stops here (use --rotate-token)"
        create_token=0
    else
        die "token $TOKEN_ID exists but $SECRET_FILE is missing or empty; its secret cannot be read back. Re-run with --rotate-token to replace the token (only this node's token: other nodes keep theirs)."
    fi
fi
if [ "$TOKEN_NAME" != drover ] && json_has "$tokens" tokenid drover; then
    echo "note: the shared token $USER_ID!drover of an older pve-setup.sh still exists; once every node uses its own token (drover status works there), remove it: pveum user token remove $USER_ID drover"
fi
if [ "$create_token" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run: '
        show pveum user token add "$USER_ID" "$TOKEN_NAME" --privsep 1 --comment "drover agent" --output-format json
        echo "would write the token secret to $SECRET_FILE (mode 0600, root:root)"
    else
        printf '+ '
        show pveum user token add "$USER_ID" "$TOKEN_NAME" --privsep 1 --comment "drover agent" --output-format json
        json=$(pveum user token add "$USER_ID" "$TOKEN_NAME" --privsep 1 --comment "drover agent" --output-format json)
        secret=$(json_lines "$json" | sed -n 's/^"value":"\([^"]*\)"$/\1/p')
        [ -n "$secret" ] || die "pveum printed no token secret; remove the token (pveum user token remove $USER_ID $TOKEN_NAME) and try again"
        dir=$(dirname "$SECRET_FILE")
        mkdir -p "$dir"
        old_umask=$(umask)
        umask 077
        tmp="$SECRET_FILE.new.$$"
        printf '%s\n' "$secret" > "$tmp"
        umask "$old_umask"
        chmod 0600 "$tmp"
        chown root:root "$tmp"
        mv -f "$tmp" "$SECRET_FILE"
        echo "token secret written to $SECRET_FILE (0600 root:root)"
    fi
fi

# 4. ACLs, for the user and the token (privilege separation: both are needed).
acl() {
    path=$1
    role=$2
    shift 2
    change pveum acl modify "$path" --roles "$role" --users "$USER_ID" --tokens "$TOKEN_ID" "$@"
}
acl "$GUEST_PATH" "$ROLE"
for s in $STORAGES; do
    acl "/storage/$s" "$ROLE"
done
if [ "$SDN" = 1 ]; then
    for b in $BRIDGES; do
        acl "/sdn/zones/localnetwork/$b" "$ROLE"
    done
fi
acl "/nodes/$NODE" "$ROLE"
if [ "$SYS_MODIFY" = 1 ]; then
    acl / "$SYS_ROLE" --propagate 0
fi

if [ -z "$SAFETY_STORAGE" ]; then
    echo "note: no --safety-storage given: set [safety] storage in drover.toml to a backup storage listed in --storage, or destructive steps are refused (safety_storage_unset)"
fi

if [ -n "$POOL" ]; then
    acls=$(query acl list)
    if printf '%s\n' "$acls" | tr '}' '\n' | grep -F '"path":"/vms"' | grep -Fq "\"ugid\":\"$TOKEN_ID\""; then
        echo "note: $TOKEN_ID still holds $ROLE on /vms from an earlier run, which covers every guest of the cluster; drop it with: pveum acl delete /vms --roles $ROLE --tokens '$TOKEN_ID'"
    fi
fi

done_note=""
pool_line=""
[ -z "$POOL" ] || pool_line="
  pool = \"$POOL\"                     # guests the agent creates join the pool"
[ "$DRY_RUN" = 0 ] || done_note=" (dry run: nothing was changed)"
cat <<EOF

Done$done_note.
In /etc/drover/drover.toml:
  [proxmox]
  token_id = "$TOKEN_ID"
  token_secret_file = "pve-token"   # the unit loads $SECRET_FILE as credential pve-token$pool_line
Then: drover check-config, drover plan, systemctl enable --now drover
In a cluster: run this script on every other node as well (each gets its own token).
EOF
