//! The `shoal` command: Docker-like (`network`, `service`, `node`, `stack`, `secret`,
//! `config`, `volume`) and kubectl-like
//! (`apply`, `get`, `delete`, `watch`) access to a Shoal cluster. It speaks only HTTP to the
//! API (`/apis/shoal/v1/...`) and shares nothing with the controller but the object types of
//! `shoal-api-types`.
//!
//! Layout: [`args`] defines the command line; [`context`] finds the server, its CA and the
//! token; [`client`] is the HTTP(S) client; [`flags`] turns Docker-style flags into objects; [`format`] prints
//! tables and ages; [`progress`] waits for services to converge; [`stack`] turns compose
//! files into objects; [`cmd`] runs commands.
//!
//! Exit status: 0 on success, 1 when anything failed (the reason on stderr), 2 for bad
//! usage (from clap); `exec` exits with the command's own status.

pub mod args;
pub mod client;
pub mod cmd;
pub mod context;
pub mod dev;
pub mod flags;
pub mod format;
pub mod kinds;
pub mod progress;
pub mod stack;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use shoal_api_types::{ConfigSpec, SecretSpec};

pub use args::Cli;
use args::Command;
use client::Client;

/// An error whose message was already printed (commands that go on after a failure, like
/// `rm a b c`, report each failure as it happens and end with this).
#[derive(Debug, thiserror::Error)]
#[error("errors were reported above")]
pub struct Reported;

/// Ends `shoal` with this exit status, nothing more to print (`exec` passes on the
/// command's status this way).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitWith(pub i32);

impl ExitWith {
    /// The process exit code: the low 8 bits, as a shell sees it, but never 0 for a
    /// failure (e.g. 256 becomes 1).
    pub fn code(&self) -> u8 {
        match (self.0 & 0xff) as u8 {
            0 if self.0 != 0 => 1,
            c => c,
        }
    }
}

/// Prints an error on stderr as `Error: ...`.
pub fn report(err: &anyhow::Error) {
    eprintln!("Error: {err:#}");
}

/// Runs one command line.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Commands that do not talk to the API run before a server is resolved.
    let cli = match cli.command {
        Command::Dev(args) => return dev::run(args).await,
        _ => cli,
    };
    let target = context::target_from_env(context::Settings {
        server: cli.server.clone(),
        token: cli.token.clone(),
        ca: cli.ca.clone(),
    })?;
    let client = Client::for_target(&target)?;
    let tty = std::io::stdout().is_terminal();
    match &cli.command {
        Command::Apply(a) => cmd::apply::run(&client, a, out, tty).await,
        Command::Get(a) => cmd::resources::get(&client, a, out).await,
        Command::Delete(a) => cmd::resources::delete(&client, a, out).await,
        Command::Watch(a) => cmd::resources::watch(&client, a, out).await,
        Command::Network(c) => cmd::network::run(&client, c, out).await,
        Command::Service(c) => cmd::service::run(&client, c, out, tty).await,
        Command::Node(c) => cmd::node::run(&client, c, out).await,
        Command::Stack(c) => cmd::stack::run(&client, c, out, tty).await,
        Command::Secret(c) => cmd::payload::run::<SecretSpec>(&client, c, out).await,
        Command::Config(c) => cmd::payload::run::<ConfigSpec>(&client, c, out).await,
        Command::Volume(c) => cmd::volume::run(&client, c, out).await,
        Command::Exec(a) => cmd::exec::run(&client, a, out).await,
        Command::Logs(a) => cmd::logs::task(&client, a, out).await,
        Command::Token(c) => cmd::token::run(&client, c, out).await,
        Command::JoinToken(a) => cmd::token::join_token(&client, a, out).await,
        Command::System(c) => cmd::system::run(&client, c, out).await,
        Command::Dev(_) => unreachable!("handled above"),
    }
}

/// Runs one command line writing to stdout, prints any error, and gives the exit status.
pub async fn main(cli: Cli) -> ExitCode {
    let mut out = std::io::stdout();
    let result = run(cli, &mut out).await;
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Reported>() => ExitCode::FAILURE,
        Err(e) if e.is::<ExitWith>() => {
            ExitCode::from(e.downcast_ref::<ExitWith>().map_or(1, ExitWith::code))
        }
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}
