//! `shoal secret create|ls|inspect|rm` and `shoal config create|ls|inspect|rm`, as
//! Docker's. The data goes to the server once, in the create request (`spec.data`,
//! base64); no answer ever holds it, so `ls` and `inspect` show metadata, size and
//! fingerprint only.

use std::io::{Read, Write};

use anyhow::{Context as _, Result};
use chrono::Utc;
use shoal_api_types::payload::{encode_payload, PayloadKind};
use shoal_api_types::{ConfigSpec, Object, SecretSpec};

use crate::args::{OutputFormat, PayloadCommand, PayloadCreateArgs};
use crate::client::Client;
use crate::cmd::network::{inspect_each, rm};
use crate::cmd::resources::print_value;
use crate::flags::parse_key_value;
use crate::format::payloads_table;
use crate::kinds::Kind;

/// A kind whose object `create` can build from data.
pub trait Payload: PayloadKind {
    /// The kind, for `rm`.
    const CLI_KIND: Kind;
    /// A spec holding `data` (base64).
    fn with_data(data: String) -> Self;
}

impl Payload for SecretSpec {
    const CLI_KIND: Kind = Kind::Secret;
    fn with_data(data: String) -> Self {
        SecretSpec { data: Some(data) }
    }
}

impl Payload for ConfigSpec {
    const CLI_KIND: Kind = Kind::Config;
    fn with_data(data: String) -> Self {
        ConfigSpec { data: Some(data) }
    }
}

/// The object `create` sends: the file's bytes (or stdin's for `-`) as `spec.data`.
pub fn payload_from_args<S: Payload>(
    a: &PayloadCreateArgs,
    stdin: &mut dyn Read,
) -> Result<Object<S>> {
    let bytes = if a.file == "-" {
        let mut b = Vec::new();
        stdin
            .read_to_end(&mut b)
            .context("cannot read the data from stdin")?;
        b
    } else {
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file))?
    };
    let mut obj = Object::new(a.name.clone(), S::with_data(encode_payload(&bytes)));
    for l in &a.labels {
        let (k, v) = parse_key_value("--label", l).map_err(anyhow::Error::msg)?;
        obj.metadata.labels.insert(k, v);
    }
    Ok(obj)
}

/// Runs a `shoal secret` or `shoal config` command.
pub async fn run<S: Payload>(
    client: &Client,
    cmd: &PayloadCommand,
    out: &mut dyn Write,
) -> Result<()> {
    match cmd {
        PayloadCommand::Create(a) => {
            let obj = payload_from_args::<S>(a, &mut std::io::stdin())?;
            let created = client.create(&obj).await?;
            writeln!(out, "{}", created.name())?;
            Ok(())
        }
        PayloadCommand::Ls(a) => {
            let list = client.list::<S>(&[]).await?;
            if a.quiet {
                for p in &list.items {
                    writeln!(out, "{}", p.name())?;
                }
                return Ok(());
            }
            match a.output {
                OutputFormat::Table => write!(out, "{}", payloads_table(&list.items, Utc::now()))?,
                other => print_value(out, &list, other)?,
            }
            Ok(())
        }
        PayloadCommand::Inspect(a) => inspect_each::<S>(client, a, out).await,
        PayloadCommand::Rm(a) => rm(client, S::CLI_KIND, a, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn create_args(argv: &[&str]) -> PayloadCreateArgs {
        let mut full = vec!["shoal", "secret", "create"];
        full.extend_from_slice(argv);
        match crate::Cli::try_parse_from(full).unwrap().command {
            crate::args::Command::Secret(PayloadCommand::Create(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_sends_the_file_or_stdin_as_base64_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.txt");
        std::fs::write(&path, b"s3cret\n").unwrap();
        let a = create_args(&["-l", "env=prod", "pw", path.to_str().unwrap()]);
        let s: shoal_api_types::Secret = payload_from_args(&a, &mut std::io::empty()).unwrap();
        assert_eq!(s.name(), "pw");
        assert_eq!(s.spec.data.as_deref(), Some("czNjcmV0Cg=="));
        assert_eq!(
            s.metadata.labels.get("env").map(String::as_str),
            Some("prod")
        );
        let a = create_args(&["conf", "-"]);
        let c: shoal_api_types::Config =
            payload_from_args(&a, &mut "listen 80".as_bytes()).unwrap();
        assert_eq!(c.kind, "Config");
        assert_eq!(
            c.spec.data.as_deref(),
            Some(encode_payload(b"listen 80").as_str())
        );
        let a = create_args(&["pw", "/nonexistent/pw"]);
        let e = payload_from_args::<SecretSpec>(&a, &mut std::io::empty()).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/pw"),
            "{e}"
        );
        let a = create_args(&["-l", "novalue", "pw", "-"]);
        assert!(payload_from_args::<SecretSpec>(&a, &mut "x".as_bytes()).is_err());
    }
}
