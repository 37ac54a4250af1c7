//! The simulator as its own program.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match pve_sim::run_cli(std::env::args().skip(1).collect()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}
