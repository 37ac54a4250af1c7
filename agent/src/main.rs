//! `drover`: the reconcile agent for Proxmox VE hosts (command line).
//!
//! Exit codes follow the convention `terraform plan -detailed-exitcode` made familiar:
//! 0 success / nothing to do, 1 error, 2 success with changes (or work left pending).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use drover::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Reconcile agent for Proxmox VE hosts"
)]
struct Cli {
    /// The agent's config file.
    #[arg(long, global = true, env = "DROVER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the config file and what it points at; exit 0 when the agent can start.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    drover::logging::init("info");
    let result = match cli.command {
        Command::CheckConfig => check_config(&cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drover: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    println!(
        "config {} is valid: host {}, fleet {}",
        path.display(),
        config.host,
        config.fleet
    );
    Ok(ExitCode::SUCCESS)
}
