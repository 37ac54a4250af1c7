//! `drover`: the reconcile agent for Proxmox VE hosts (command line).
//!
//! Exit codes follow the convention `terraform plan -detailed-exitcode` made familiar:
//! 0 success / nothing to do, 1 error, 2 success with changes (or work left pending), 64 a
//! usage error (EX_USAGE from sysexits.h: an unknown verb, option or a malformed argument).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// sysexits.h EX_USAGE: the command line was wrong.
const EX_USAGE: u8 = 64;

use drover::service::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Reconcile agent for Proxmox VE hosts",
    mut_subcommands = drover::operator::help::add_examples
)]
struct Cli {
    /// The agent's config file.
    #[arg(long, global = true, env = "DROVER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log lines as human text (default; no colours unless stderr is a terminal) or JSON.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "DROVER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the shell completion script for SHELL, or write all of them into a directory.
    Completions {
        #[arg(value_enum, required_unless_present = "out")]
        shell: Option<clap_complete::Shell>,
        /// Write drover.bash, _drover and drover.fish into this directory.
        #[arg(long, conflicts_with = "shell")]
        out: Option<PathBuf>,
    },
    /// Print drover(8), generated from this command line, or write every page (one per verb)
    /// into a directory.
    Man {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the agent: recover, then reconcile every `interval` until SIGTERM.
    Run {
        /// One pass: wait for its steps and exit (0 converged, 2 left pending, 1 error).
        #[arg(long)]
        once: bool,
    },
    /// Show what the agent would do, like `terraform plan` (0 no changes, 2 changes, 1 error).
    Plan {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check the config file and what it points at; exit 0 when the agent can start.
    CheckConfig {
        /// Do not contact a hub (for ExecStartPre: a start must not wait on the network).
        #[arg(long)]
        offline: bool,
    },
    /// Per-guest sync state from the running daemon (0 all converged, 2 not, 1 error).
    Status {
        /// Only this guest (exit code for it alone; 1 when it is not managed here).
        vmid: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Reconcile now, pre-empting backoff: one guest or all (0 requested, 1 error).
    Reconcile {
        vmid: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Stop reconciling a guest (or the whole host) until resumed (0 done, 1 refused).
    Suspend {
        vmid: Option<u32>,
        #[arg(long)]
        reason: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Resume a suspended guest (or the whole host) (0 done, 1 refused).
    Resume {
        vmid: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show the journal: recent steps, only those in flight, or the audit log of gate
    /// decisions; `check` verifies it.
    Journal {
        #[arg(long, conflicts_with = "audit")]
        in_flight: bool,
        /// The audit log: every gate decision (approvals, refusals, trust changes), newest last.
        #[arg(long)]
        audit: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(subcommand)]
        action: Option<JournalAction>,
    },
    /// The safety copies Drover took before destructive steps (its manifests): volid, state,
    /// protection window, sha256, what they do not hold.
    Copies {
        vmid: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the trust document in force byte for byte (it may be a signed rotation newer
    /// than the file); its version and sha256 go to stderr (0 valid, 1 none in force).
    Trust {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Pending approval requests with the command to sign each.
    Approvals {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Submit a signed approval: through the running daemon (which checks it at once), or
    /// into its inbox when it is not running (0 accepted, 1 refused with the gate's code).
    Approve {
        /// The request text that was signed.
        file: PathBuf,
        /// One or more `ssh-keygen -Y sign` signature files.
        #[arg(required = true)]
        signatures: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check a signed approval offline against the trust document; prints the gate's code
    /// (0 valid, 1 refused).
    VerifyApproval {
        file: PathBuf,
        #[arg(required = true)]
        signatures: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Signed jobs: render a request from the host's current state for an operator to sign
    /// (snapshot, delete-snapshot, rollback, backup, restore, reboot).
    Job {
        #[command(subcommand)]
        verb: JobVerb,
    },
    /// Jobs: pending signature, queued, running with its phase, done, failed with the reason
    /// (0 none open, 2 some pending, queued or running).
    Jobs {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run the PVE simulator (for trying Drover without a Proxmox host).
    Sim {
        /// Arguments passed to the simulator (see `drover sim -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A self-contained demonstration against an in-process simulator.
    Demo,
    /// The hub team's tools, working on a local copy of the hub's tree (the directory served
    /// at the agents' `[source] url`, holding `hosts/<host>/`).
    Fleet {
        #[command(subcommand)]
        verb: FleetVerb,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JobKindArg {
    Snapshot,
    DeleteSnapshot,
    Rollback,
    Backup,
    Restore,
    Reboot,
}

#[derive(Subcommand)]
enum JobVerb {
    /// Render a job request from the host's current state into the state directory's
    /// `jobs/pending/` (0 rendered, 1 refused with the job's code).
    New {
        #[arg(value_enum)]
        kind: JobKindArg,
        #[arg(long)]
        vmid: u32,
        /// snapshot, delete-snapshot, rollback: the snapshot's name.
        #[arg(long)]
        snapshot: Option<String>,
        /// snapshot: its description (letters, digits and . _ : / , = @ + -; no spaces).
        #[arg(long)]
        description: Option<String>,
        /// backup: the target storage; restore: the storage of the restored volumes.
        #[arg(long)]
        storage: Option<String>,
        /// backup: protect the archive from pruning and deletion.
        #[arg(long)]
        protected: bool,
        /// restore: the backup's volume id (a free vmid restores beside the original).
        #[arg(long)]
        backup: Option<String>,
        /// Hold the guest after the job (suspended until `drover resume`); the default for
        /// restore and rollback.
        #[arg(long, conflicts_with = "no_hold")]
        hold: bool,
        /// Let the desired state converge the guest right after the job.
        #[arg(long)]
        no_hold: bool,
        /// A change ticket, recorded in the audit log (never bound).
        #[arg(long)]
        ticket: Option<String>,
        /// Validity of the request in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum FleetVerb {
    /// Validate every host's desired.toml as the agent will, sign the changed ones with the
    /// hub key (ssh-keygen -Y sign), regenerate every approvals and jobs index (0 done, 1
    /// refused: nothing written; with --dry-run 2 when something would change).
    Publish {
        tree: PathBuf,
        /// The hub key for `ssh-keygen -f`: a private key file, or the public key of a key
        /// held in ssh-agent (or on a token behind it).
        #[arg(long)]
        key: PathBuf,
        /// The trust document the agents use (its domain and hub key).
        #[arg(long, env = "DROVER_FLEET_TRUST")]
        trust: PathBuf,
        /// Show what would change, host by host; write nothing, sign nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Every pending approval, signed-job request and unfinished guest across the fleet, from
    /// the agents' reports; --extract writes the chosen requests for one ssh-keygen run (0
    /// nothing pending, 2 pending).
    Pending {
        tree: PathBuf,
        /// Only these hosts (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Only these guests (repeatable).
        #[arg(long = "guest")]
        guests: Vec<u32>,
        /// Only these ops or job kinds, e.g. destroy_guest, snapshot (repeatable).
        #[arg(long = "op")]
        ops: Vec<String>,
        /// Write the chosen requests as DIR/<host>/<file> and print the signing command.
        #[arg(long)]
        extract: Option<PathBuf>,
        /// With --extract: also run that ssh-keygen command with this key.
        #[arg(long, requires = "extract")]
        key: Option<PathBuf>,
        /// The trust document (gives the namespace; otherwise taken from the reports).
        #[arg(long, env = "DROVER_FLEET_TRUST")]
        trust: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Place signed approvals (files or directories, as --extract lays them out) under
    /// hosts/<host>/approvals/, signed jobs under hosts/<host>/jobs/, and regenerate those
    /// indexes (0 all placed, 1 any refused).
    AddApprovals {
        tree: PathBuf,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check every signature against this trust document first (recommended).
        #[arg(long, env = "DROVER_FLEET_TRUST")]
        trust: Option<PathBuf>,
        /// Where a signed trust rotation goes (repeatable; default: every host in the tree).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One row per host: revision published and applied, last report, state, trust and agent
    /// version (0 all converged, 2 not).
    Status {
        tree: PathBuf,
        /// A report older than this makes the host `stale`.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        stale_after: std::time::Duration,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum JournalAction {
    /// Verify every record decodes; exit 1 with a report when the store is damaged.
    Check,
    /// Move a damaged database aside (kept as db.broken-<time>); the next start begins a new
    /// store with a new state epoch, so outstanding approvals must be signed again.
    MoveAside,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            // Help and version are answers; every other parse failure is a usage error, 64
            // (EX_USAGE): never 0 ("nothing to do") nor 2 ("changes").
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    let default_filter = match cli.command {
        Command::Run { .. } | Command::Sim { .. } => "info",
        Command::Demo => "warn",
        _ => "warn",
    };
    drover::service::logging::init(default_filter, cli.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drover: error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drover: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    use drover::cli;
    match cli.command {
        Command::Completions { shell, out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            use drover::operator::help;
            match (shell, out) {
                (_, Some(dir)) => {
                    let n = help::write_completions(cmd, &dir)
                        .with_context(|| format!("writing completions to {}", dir.display()))?;
                    println!("{n} completion scripts written to {}", dir.display());
                }
                (Some(shell), None) => {
                    use std::io::Write;
                    std::io::stdout().write_all(&help::completion(cmd, shell))?;
                }
                (None, None) => anyhow::bail!("name a shell or --out DIR"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            use drover::operator::help;
            match out {
                Some(dir) => {
                    let n = help::write_man_pages(cmd, &dir)
                        .with_context(|| format!("writing man pages to {}", dir.display()))?;
                    println!("{n} man pages written to {}", dir.display());
                }
                None => {
                    use std::io::Write;
                    let pages = help::man_pages(cmd)?;
                    if let Some((_, roff)) = pages.first() {
                        std::io::stdout().write_all(roff)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { offline } => cli::check_config(&cli.config, offline).await,
        Command::Status { vmid, output } => {
            cli::status(&cli.config, output == Output::Json, vmid).await
        }
        Command::Reconcile { vmid, output } => {
            cli::control(
                &cli.config,
                "/v1/reconcile",
                serde_json::json!({"vmid": vmid}),
                output == Output::Json,
            )
            .await
        }
        Command::Suspend {
            vmid,
            reason,
            output,
        } => {
            cli::control(
                &cli.config,
                "/v1/suspend",
                serde_json::json!({"vmid": vmid, "reason": reason}),
                output == Output::Json,
            )
            .await
        }
        Command::Resume { vmid, output } => {
            cli::control(
                &cli.config,
                "/v1/resume",
                serde_json::json!({"vmid": vmid}),
                output == Output::Json,
            )
            .await
        }
        Command::Run { once } => cli::run(&cli.config, once).await,
        Command::Plan { output } => cli::plan(&cli.config, output == Output::Json).await,
        Command::Journal {
            in_flight,
            audit,
            output,
            action,
        } => {
            let config = Config::load(&cli.config)?;
            match action {
                Some(JournalAction::Check) => cli::journal_check(&config.state_dir),
                Some(JournalAction::MoveAside) => cli::journal_move_aside(&config.state_dir),
                None if audit => cli::journal_audit(&config.state_dir, output == Output::Json),
                None => cli::journal_show(&config.state_dir, in_flight, output == Output::Json),
            }
        }
        Command::Approvals { output } => cli::approvals(&cli.config, output == Output::Json),
        Command::Copies { vmid, output } => cli::copies(&cli.config, vmid, output == Output::Json),
        Command::Trust { output } => cli::trust(&cli.config, output == Output::Json),
        Command::Approve {
            file,
            signatures,
            output,
        } => cli::approve(&cli.config, &file, &signatures, output == Output::Json).await,
        Command::VerifyApproval {
            file,
            signatures,
            output,
        } => cli::verify_approval(&cli.config, &file, &signatures, output == Output::Json),
        Command::Sim { args } => drover::sim::run_cli(args)
            .await
            .context("running the simulator"),
        Command::Demo => drover::demo::run().await,
        Command::Jobs { output } => drover::job_cli::jobs(&cli.config, output == Output::Json),
        Command::Job {
            verb:
                JobVerb::New {
                    kind,
                    vmid,
                    snapshot,
                    description,
                    storage,
                    protected,
                    backup,
                    hold,
                    no_hold,
                    ticket,
                    ttl,
                    output,
                },
        } => {
            let kind = match kind {
                JobKindArg::Snapshot => gate::JobKind::Snapshot,
                JobKindArg::DeleteSnapshot => gate::JobKind::DeleteSnapshot,
                JobKindArg::Rollback => gate::JobKind::RollbackSnapshot,
                JobKindArg::Backup => gate::JobKind::Backup,
                JobKindArg::Restore => gate::JobKind::RestoreBackup,
                JobKindArg::Reboot => gate::JobKind::Reboot,
            };
            let ask = drover::jobs::plan::JobAsk {
                kind,
                vmid,
                snapname: snapshot,
                description,
                storage,
                protected,
                volid: backup,
                hold: (hold || drover::jobs::plan::default_hold(kind)) && !no_hold,
            };
            drover::job_cli::job_new(
                &cli.config,
                ask,
                ticket.as_deref(),
                ttl,
                output == Output::Json,
            )
            .await
        }
        Command::Fleet { verb } => fleet(verb),
    }
}

fn fleet(verb: FleetVerb) -> anyhow::Result<ExitCode> {
    let json = match &verb {
        FleetVerb::Publish { output, .. }
        | FleetVerb::Pending { output, .. }
        | FleetVerb::AddApprovals { output, .. }
        | FleetVerb::Status { output, .. } => *output == Output::Json,
    };
    let result = fleet_verb(verb);
    if json && let Err(e) = &result {
        println!(
            "{}",
            serde_json::to_string_pretty(&drover::fleet::command::FleetFailure::json(e))
                .unwrap_or_default()
        );
    }
    result
}

fn fleet_verb(verb: FleetVerb) -> anyhow::Result<ExitCode> {
    use drover::fleet::command;
    match verb {
        FleetVerb::Publish {
            tree,
            key,
            trust,
            dry_run,
            output,
        } => command::publish(&tree, &key, &trust, dry_run, output == Output::Json),
        FleetVerb::Pending {
            tree,
            hosts,
            guests,
            ops,
            extract,
            key,
            trust,
            output,
        } => command::pending(
            &tree,
            &drover::fleet::pending::Selection { hosts, guests, ops },
            extract.as_deref(),
            key.as_deref(),
            trust.as_deref(),
            output == Output::Json,
        ),
        FleetVerb::AddApprovals {
            tree,
            paths,
            trust,
            hosts,
            output,
        } => command::add_approvals(
            &tree,
            &paths,
            trust.as_deref(),
            &hosts,
            output == Output::Json,
        ),
        FleetVerb::Status {
            tree,
            stale_after,
            output,
        } => command::status(&tree, stale_after, output == Output::Json),
    }
}
