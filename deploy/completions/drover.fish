# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_drover_global_optspecs
    string join \n config= log-format= h/help V/version
end

function __fish_drover_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_drover_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_drover_using_subcommand
    set -l cmd (__fish_drover_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c drover -n "__fish_drover_needs_command" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_needs_command" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_needs_command" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_needs_command" -s V -l version -d 'Print version'
complete -c drover -n "__fish_drover_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL, or write all of them into a directory'
complete -c drover -n "__fish_drover_needs_command" -f -a "man" -d 'Print drover(8), generated from this command line, or write every page (one per verb) into a directory'
complete -c drover -n "__fish_drover_needs_command" -f -a "run" -d 'Run the agent: recover, then reconcile every `interval` until SIGTERM'
complete -c drover -n "__fish_drover_needs_command" -f -a "plan" -d 'Show what the agent would do, like `terraform plan` (0 no changes, 2 changes, 1 error)'
complete -c drover -n "__fish_drover_needs_command" -f -a "check-config" -d 'Check the config file and what it points at; exit 0 when the agent can start'
complete -c drover -n "__fish_drover_needs_command" -f -a "status" -d 'Per-guest sync state from the running daemon (0 all converged, 2 not, 1 error)'
complete -c drover -n "__fish_drover_needs_command" -f -a "reconcile" -d 'Reconcile now, pre-empting backoff: one guest or all (0 requested, 1 error)'
complete -c drover -n "__fish_drover_needs_command" -f -a "suspend" -d 'Stop reconciling a guest (or the whole host) until resumed (0 done, 1 refused)'
complete -c drover -n "__fish_drover_needs_command" -f -a "resume" -d 'Resume a suspended guest (or the whole host) (0 done, 1 refused)'
complete -c drover -n "__fish_drover_needs_command" -f -a "journal" -d 'Show the journal: recent steps, only those in flight, or the audit log of gate decisions; `check` verifies it'
complete -c drover -n "__fish_drover_needs_command" -f -a "copies" -d 'The safety copies Drover took before destructive steps (its manifests): volid, state, protection window, sha256, what they do not hold'
complete -c drover -n "__fish_drover_needs_command" -f -a "trust" -d 'Print the trust document in force byte for byte (it may be a signed rotation newer than the file); its version and sha256 go to stderr (0 valid, 1 none in force)'
complete -c drover -n "__fish_drover_needs_command" -f -a "approvals" -d 'Pending approval requests with the command to sign each'
complete -c drover -n "__fish_drover_needs_command" -f -a "approve" -d 'Submit a signed approval: through the running daemon (which checks it at once), or into its inbox when it is not running (0 accepted, 1 refused with the gate\'s code)'
complete -c drover -n "__fish_drover_needs_command" -f -a "verify-approval" -d 'Check a signed approval offline against the trust document; prints the gate\'s code (0 valid, 1 refused)'
complete -c drover -n "__fish_drover_needs_command" -f -a "job" -d 'Signed jobs: render a request from the host\'s current state for an operator to sign (snapshot, delete-snapshot, rollback, backup, restore, reboot)'
complete -c drover -n "__fish_drover_needs_command" -f -a "jobs" -d 'Jobs: pending signature, queued, running with its phase, done, failed with the reason (0 none open, 2 some pending, queued or running)'
complete -c drover -n "__fish_drover_needs_command" -f -a "sim" -d 'Run the PVE simulator (for trying Drover without a Proxmox host)'
complete -c drover -n "__fish_drover_needs_command" -f -a "demo" -d 'A self-contained demonstration against an in-process simulator'
complete -c drover -n "__fish_drover_needs_command" -f -a "fleet" -d 'The hub team\'s tools, working on a local copy of the hub\'s tree (the directory served at the agents\' `[source] url`, holding `hosts/<host>/`)'
complete -c drover -n "__fish_drover_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand completions" -l out -d 'Write drover.bash, _drover and drover.fish into this directory' -r -F
complete -c drover -n "__fish_drover_using_subcommand completions" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand completions" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand completions" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand man" -l out -r -F
complete -c drover -n "__fish_drover_using_subcommand man" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand man" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand man" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand run" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand run" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand run" -l once -d 'One pass: wait for its steps and exit (0 converged, 2 left pending, 1 error)'
complete -c drover -n "__fish_drover_using_subcommand run" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand plan" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand plan" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand plan" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand plan" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand check-config" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand check-config" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand check-config" -l offline -d 'Do not contact a hub (for ExecStartPre: a start must not wait on the network)'
complete -c drover -n "__fish_drover_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand status" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand status" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand status" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand status" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand reconcile" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand reconcile" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand reconcile" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand reconcile" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand suspend" -l reason -r
complete -c drover -n "__fish_drover_using_subcommand suspend" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand suspend" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand suspend" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand suspend" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand resume" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand resume" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand resume" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand resume" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -l in-flight
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -l audit -d 'The audit log: every gate decision (approvals, refusals, trust changes), newest last'
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -f -a "check" -d 'Verify every record decodes; exit 1 with a report when the store is damaged'
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -f -a "move-aside" -d 'Move a damaged database aside (kept as db.broken-<time>); the next start begins a new store with a new state epoch, so outstanding approvals must be signed again'
complete -c drover -n "__fish_drover_using_subcommand journal; and not __fish_seen_subcommand_from check move-aside help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from check" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from check" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from move-aside" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from move-aside" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from move-aside" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from help" -f -a "check" -d 'Verify every record decodes; exit 1 with a report when the store is damaged'
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from help" -f -a "move-aside" -d 'Move a damaged database aside (kept as db.broken-<time>); the next start begins a new store with a new state epoch, so outstanding approvals must be signed again'
complete -c drover -n "__fish_drover_using_subcommand journal; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand copies" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand copies" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand copies" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand copies" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand trust" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand trust" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand trust" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand trust" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand approvals" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand approvals" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand approvals" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand approvals" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand approve" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand approve" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand approve" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand approve" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand verify-approval" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand verify-approval" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand verify-approval" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand verify-approval" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand job; and not __fish_seen_subcommand_from new help" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand job; and not __fish_seen_subcommand_from new help" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand job; and not __fish_seen_subcommand_from new help" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand job; and not __fish_seen_subcommand_from new help" -f -a "new" -d 'Render a job request from the host\'s current state into the state directory\'s `jobs/pending/` (0 rendered, 1 refused with the job\'s code)'
complete -c drover -n "__fish_drover_using_subcommand job; and not __fish_seen_subcommand_from new help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l vmid -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l snapshot -d 'snapshot, delete-snapshot, rollback: the snapshot\'s name' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l description -d 'snapshot: its description (letters, digits and . _ : / , = @ + -; no spaces)' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l storage -d 'backup: the target storage; restore: the storage of the restored volumes' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l backup -d 'restore: the backup\'s volume id (a free vmid restores beside the original)' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l ticket -d 'A change ticket, recorded in the audit log (never bound)' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l ttl -d 'Validity of the request in seconds (at most a day)' -r
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l protected -d 'backup: protect the archive from pruning and deletion'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l hold -d 'Hold the guest after the job (suspended until `drover resume`); the default for restore and rollback'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -l no-hold -d 'Let the desired state converge the guest right after the job'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from new" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from help" -f -a "new" -d 'Render a job request from the host\'s current state into the state directory\'s `jobs/pending/` (0 rendered, 1 refused with the job\'s code)'
complete -c drover -n "__fish_drover_using_subcommand job; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand jobs" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand jobs" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand jobs" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand jobs" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand sim" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand sim" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand sim" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand demo" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand demo" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand demo" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -f -a "publish" -d 'Validate every host\'s desired.toml as the agent will, sign the changed ones with the hub key (ssh-keygen -Y sign), regenerate every approvals and jobs index (0 done, 1 refused: nothing written; with --dry-run 2 when something would change)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -f -a "pending" -d 'Every pending approval, signed-job request and unfinished guest across the fleet, from the agents\' reports; --extract writes the chosen requests for one ssh-keygen run (0 nothing pending, 2 pending)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -f -a "add-approvals" -d 'Place signed approvals (files or directories, as --extract lays them out) under hosts/<host>/approvals/, signed jobs under hosts/<host>/jobs/, and regenerate those indexes (0 all placed, 1 any refused)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -f -a "status" -d 'One row per host: revision published and applied, last report, state, trust and agent version (0 all converged, 2 not)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and not __fish_seen_subcommand_from publish pending add-approvals status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l key -d 'The hub key for `ssh-keygen -f`: a private key file, or the public key of a key held in ssh-agent (or on a token behind it)' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l trust -d 'The trust document the agents use (its domain and hub key)' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -l dry-run -d 'Show what would change, host by host; write nothing, sign nothing'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from publish" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l host -d 'Only these hosts (repeatable)' -r
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l guest -d 'Only these guests (repeatable)' -r
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l op -d 'Only these ops or job kinds, e.g. destroy_guest, snapshot (repeatable)' -r
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l extract -d 'Write the chosen requests as DIR/<host>/<file> and print the signing command' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l key -d 'With --extract: also run that ssh-keygen command with this key' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l trust -d 'The trust document (gives the namespace; otherwise taken from the reports)' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from pending" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -l trust -d 'Check every signature against this trust document first (recommended)' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -l host -d 'Where a signed trust rotation goes (repeatable; default: every host in the tree)' -r
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from add-approvals" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from status" -l stale-after -d 'A report older than this makes the host `stale`' -r
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from status" -l output -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from status" -l config -d 'The agent\'s config file' -r -F
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from status" -l log-format -d 'Log lines as human text (default; no colours unless stderr is a terminal) or JSON' -r -f -a "text\t''
json\t''"
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "publish" -d 'Validate every host\'s desired.toml as the agent will, sign the changed ones with the hub key (ssh-keygen -Y sign), regenerate every approvals and jobs index (0 done, 1 refused: nothing written; with --dry-run 2 when something would change)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "pending" -d 'Every pending approval, signed-job request and unfinished guest across the fleet, from the agents\' reports; --extract writes the chosen requests for one ssh-keygen run (0 nothing pending, 2 pending)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "add-approvals" -d 'Place signed approvals (files or directories, as --extract lays them out) under hosts/<host>/approvals/, signed jobs under hosts/<host>/jobs/, and regenerate those indexes (0 all placed, 1 any refused)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "status" -d 'One row per host: revision published and applied, last report, state, trust and agent version (0 all converged, 2 not)'
complete -c drover -n "__fish_drover_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "completions" -d 'Print the shell completion script for SHELL, or write all of them into a directory'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "man" -d 'Print drover(8), generated from this command line, or write every page (one per verb) into a directory'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "run" -d 'Run the agent: recover, then reconcile every `interval` until SIGTERM'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "plan" -d 'Show what the agent would do, like `terraform plan` (0 no changes, 2 changes, 1 error)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "check-config" -d 'Check the config file and what it points at; exit 0 when the agent can start'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "status" -d 'Per-guest sync state from the running daemon (0 all converged, 2 not, 1 error)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "reconcile" -d 'Reconcile now, pre-empting backoff: one guest or all (0 requested, 1 error)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "suspend" -d 'Stop reconciling a guest (or the whole host) until resumed (0 done, 1 refused)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "resume" -d 'Resume a suspended guest (or the whole host) (0 done, 1 refused)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "journal" -d 'Show the journal: recent steps, only those in flight, or the audit log of gate decisions; `check` verifies it'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "copies" -d 'The safety copies Drover took before destructive steps (its manifests): volid, state, protection window, sha256, what they do not hold'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "trust" -d 'Print the trust document in force byte for byte (it may be a signed rotation newer than the file); its version and sha256 go to stderr (0 valid, 1 none in force)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "approvals" -d 'Pending approval requests with the command to sign each'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "approve" -d 'Submit a signed approval: through the running daemon (which checks it at once), or into its inbox when it is not running (0 accepted, 1 refused with the gate\'s code)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "verify-approval" -d 'Check a signed approval offline against the trust document; prints the gate\'s code (0 valid, 1 refused)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "job" -d 'Signed jobs: render a request from the host\'s current state for an operator to sign (snapshot, delete-snapshot, rollback, backup, restore, reboot)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "jobs" -d 'Jobs: pending signature, queued, running with its phase, done, failed with the reason (0 none open, 2 some pending, queued or running)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "sim" -d 'Run the PVE simulator (for trying Drover without a Proxmox host)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "demo" -d 'A self-contained demonstration against an in-process simulator'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "fleet" -d 'The hub team\'s tools, working on a local copy of the hub\'s tree (the directory served at the agents\' `[source] url`, holding `hosts/<host>/`)'
complete -c drover -n "__fish_drover_using_subcommand help; and not __fish_seen_subcommand_from completions man run plan check-config status reconcile suspend resume journal copies trust approvals approve verify-approval job jobs sim demo fleet help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from journal" -f -a "check" -d 'Verify every record decodes; exit 1 with a report when the store is damaged'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from journal" -f -a "move-aside" -d 'Move a damaged database aside (kept as db.broken-<time>); the next start begins a new store with a new state epoch, so outstanding approvals must be signed again'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from job" -f -a "new" -d 'Render a job request from the host\'s current state into the state directory\'s `jobs/pending/` (0 rendered, 1 refused with the job\'s code)'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "publish" -d 'Validate every host\'s desired.toml as the agent will, sign the changed ones with the hub key (ssh-keygen -Y sign), regenerate every approvals and jobs index (0 done, 1 refused: nothing written; with --dry-run 2 when something would change)'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "pending" -d 'Every pending approval, signed-job request and unfinished guest across the fleet, from the agents\' reports; --extract writes the chosen requests for one ssh-keygen run (0 nothing pending, 2 pending)'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "add-approvals" -d 'Place signed approvals (files or directories, as --extract lays them out) under hosts/<host>/approvals/, signed jobs under hosts/<host>/jobs/, and regenerate those indexes (0 all placed, 1 any refused)'
complete -c drover -n "__fish_drover_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "status" -d 'One row per host: revision published and applied, last report, state, trust and agent version (0 all converged, 2 not)'
