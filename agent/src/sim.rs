//! `drover sim`: the PVE simulator behind the agent's own binary, so trying Drover needs no
//! Proxmox host and no second program.

/// Runs the simulator's command line with `args` until SIGTERM/SIGINT.
pub async fn run_cli(args: Vec<String>) -> anyhow::Result<std::process::ExitCode> {
    pve_sim::run_cli(args).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
