//! `shoal-controller`: parses flags and runs [`shoal_controller::app`].

use clap::Parser;

/// mimalloc instead of glibc's malloc (see the workspace Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    shoal_controller::app::main(shoal_controller::app::Cli::parse()).await
}
