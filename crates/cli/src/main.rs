//! `dialstack`: the operator's command line.
//!
//! - `dialstack up` runs all five services in one process on the embedded
//!   defaults (SQLite under `./data`, in-process channels, the `sim://` trunk).
//! - `dialstack demo` runs a demo campaign against a running suite and shows
//!   its progress live.
//! - `dialstack simulate` runs the pacing simulator (VICIdial's adaptive
//!   pacer against dialstack's predictive pacer) and prints a table.

mod demo;
mod simulate;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dialstack",
    version,
    about = "dialstack outbound call-center platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all five services in one process on the embedded defaults.
    Up(up::UpArgs),
    /// Run a demo campaign against a running suite.
    Demo(demo::DemoArgs),
    /// Compare pacers on simulated shifts (no services needed).
    Simulate(simulate::SimulateArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dialstack: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
