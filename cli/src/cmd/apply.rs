//! `shoal apply -f FILE|DIR|-`: sends every manifest as one multi-document body to
//! `POST /apply` (so the server validates all of it before writing any of it), prints
//! `network/appnet created|configured|unchanged` per object, then waits for the services it
//! created or changed to converge.
//!
//! With one source the body is sent as written. With several (a directory, or `-f`
//! repeated), each file's documents are parsed here, re-serialised and joined; the CLI keeps
//! which file and document each came from, so the server's `document 5` errors are shown as
//! `manifests/app.yaml, document 2`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_yaml_ng::Value;
use shoal_api_types::{Status, StatusDetail};

use crate::args::ApplyArgs;
use crate::client::{Client, ClientError};
use crate::progress::{wait_for, Target, WaitOptions};

/// One manifest source: a file, or stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path as given (or `<stdin>`).
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Reads `-f` arguments: `-` is stdin, a directory means its `*.yaml`, `*.yml` and
/// `*.json` files in name order (not recursive), anything else a file.
pub fn read_sources(args: &[String], stdin: &mut dyn Read) -> Result<Vec<Source>> {
    let mut out = vec![];
    let mut stdin_used = false;
    for arg in args {
        if arg == "-" {
            if stdin_used {
                bail!("-f - can be given only once");
            }
            stdin_used = true;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("cannot read manifests from stdin")?;
            out.push(Source {
                name: "<stdin>".into(),
                text,
            });
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {arg}"))?;
        if meta.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {arg}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{arg} holds no *.yaml, *.yml or *.json files");
            }
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                out.push(Source {
                    name: f.display().to_string(),
                    text,
                });
            }
        } else {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {arg}"))?;
            out.push(Source {
                name: arg.clone(),
                text,
            });
        }
    }
    Ok(out)
}

/// The body sent to the server and, when it was assembled from several sources, where
/// each of its documents came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// Multi-document YAML.
    pub text: String,
    /// For document `n` (1-based) of the body, `origins[n-1]` = (source name, document
    /// number in that source). Empty when the body is one source sent as written.
    pub origins: Vec<(String, usize)>,
}

/// Joins sources into one body (see the module docs).
pub fn build_body(sources: &[Source]) -> Result<Body> {
    if let [one] = sources {
        return Ok(Body {
            text: one.text.clone(),
            origins: vec![],
        });
    }
    let mut docs = vec![];
    let mut origins = vec![];
    for src in sources {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&src.text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| {
                anyhow::anyhow!("{}: document {}: not valid YAML: {e}", src.name, i + 1)
            })?;
            if value.is_null() {
                continue;
            }
            docs.push(serde_yaml_ng::to_string(&value)?);
            origins.push((src.name.clone(), i + 1));
        }
    }
    if docs.is_empty() {
        bail!("the manifests hold no object");
    }
    Ok(Body {
        text: docs.join("---\n"),
        origins,
    })
}

/// The server's rejection, with document numbers turned back into files.
pub fn describe_rejection(status: &Status, body: &Body) -> String {
    let located: Vec<&StatusDetail> = status
        .details
        .iter()
        .filter(|d| d.document.is_some())
        .collect();
    if body.origins.is_empty() || located.is_empty() {
        return status.describe();
    }
    let mut out = String::from("the manifests were rejected; nothing was applied:");
    for d in &status.details {
        let origin = d.document.and_then(|n| body.origins.get(n.wrapping_sub(1)));
        let rest = StatusDetail {
            document: None,
            ..d.clone()
        };
        match origin {
            Some((file, n)) => out.push_str(&format!("\n  - {file}, document {n}: {rest}")),
            None => out.push_str(&format!("\n  - {d}")),
        }
    }
    out
}

/// Runs `shoal apply`.
pub async fn run(client: &Client, args: &ApplyArgs, out: &mut dyn Write, tty: bool) -> Result<()> {
    let sources = read_sources(&args.files, &mut std::io::stdin())?;
    let body = build_body(&sources)?;
    let resp = match client.apply(body.text.clone(), args.dry_run, None).await {
        Ok(r) => r,
        Err(ClientError::Api(status)) => bail!("{}", describe_rejection(&status, &body)),
        Err(e) => return Err(e.into()),
    };
    let suffix = if resp.dry_run { " (dry run)" } else { "" };
    let mut touched = vec![];
    for item in &resp.items {
        writeln!(
            out,
            "{}/{} {}{suffix}",
            item.kind.to_lowercase(),
            item.name,
            item.action
        )?;
        if item.kind == "Service" && item.action != "unchanged" {
            touched.push(item.name.clone());
        }
    }
    out.flush()?;
    if resp.dry_run || args.wait.detach || touched.is_empty() {
        return Ok(());
    }
    let targets: Vec<Target> = touched.iter().map(Target::converge).collect();
    wait_for(client, &targets, WaitOptions::new(&args.wait, tty), out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_read_in_name_order_and_filtered_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), "b").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a").unwrap();
        std::fs::write(dir.path().join("c.json"), "c").unwrap();
        std::fs::write(dir.path().join("README.md"), "no").unwrap();
        let srcs =
            read_sources(&[dir.path().display().to_string()], &mut std::io::empty()).unwrap();
        let texts: Vec<&str> = srcs.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, vec!["a", "b", "c"]);
        let empty = tempfile::tempdir().unwrap();
        let err =
            read_sources(&[empty.path().display().to_string()], &mut std::io::empty()).unwrap_err();
        assert!(err.to_string().contains("holds no *.yaml"), "{err}");
    }

    #[test]
    fn stdin_is_read_once() {
        let srcs = read_sources(&["-".into()], &mut "kind: Network".as_bytes()).unwrap();
        assert_eq!(
            srcs,
            vec![Source {
                name: "<stdin>".into(),
                text: "kind: Network".into()
            }]
        );
        assert!(read_sources(&["-".into(), "-".into()], &mut std::io::empty()).is_err());
    }

    #[test]
    fn one_source_is_sent_as_written() {
        let src = Source {
            name: "a.yaml".into(),
            text: "# comment\nkind: Network\n".into(),
        };
        assert_eq!(
            build_body(std::slice::from_ref(&src)).unwrap(),
            Body {
                text: src.text,
                origins: vec![]
            }
        );
    }

    #[test]
    fn several_sources_keep_their_origins_and_report_bad_yaml_by_file() {
        let a = Source {
            name: "a.yaml".into(),
            text: "---\nkind: Network\n---\n---\nkind: Service\n".into(),
        };
        let b = Source {
            name: "b.json".into(),
            text: r#"{"kind": "Service", "n": 1}"#.into(),
        };
        let body = build_body(&[a.clone(), b]).unwrap();
        assert_eq!(
            body.text,
            "kind: Network\n---\nkind: Service\n---\nkind: Service\nn: 1\n"
        );
        assert_eq!(
            body.origins,
            vec![
                ("a.yaml".into(), 1),
                ("a.yaml".into(), 3),
                ("b.json".into(), 1)
            ]
        );
        let bad = Source {
            name: "bad.yaml".into(),
            text: "kind: [unclosed\n".into(),
        };
        let err = build_body(&[a, bad]).unwrap_err().to_string();
        assert!(
            err.starts_with("bad.yaml: document 1: not valid YAML"),
            "{err}"
        );
    }

    #[test]
    fn rejections_name_the_file_and_document() {
        let body = Body {
            text: String::new(),
            origins: vec![("a.yaml".into(), 1), ("b.yaml".into(), 2)],
        };
        let status = Status::invalid(
            "invalid manifests",
            vec![StatusDetail {
                field: "spec.replicas".into(),
                message: "must be 0 or more (got -1)".into(),
                document: Some(2),
                object: Some("service/api".into()),
            }],
        );
        assert_eq!(
            describe_rejection(&status, &body),
            "the manifests were rejected; nothing was applied:\n  - b.yaml, document 2: service/api: spec.replicas: must be 0 or more (got -1)"
        );
        let single = Body {
            text: String::new(),
            origins: vec![],
        };
        assert_eq!(describe_rejection(&status, &single), status.message);
    }
}
