//! `shoal`: parses the command line and hands it to [`shoal_cli::main`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shoal_cli::main(shoal_cli::Cli::parse()).await
}
