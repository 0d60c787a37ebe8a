//! End-to-end: every command of docs/tutorial.md runs on a fresh 3-node local cluster, in
//! order, as written (issue 15). Each ```sh block is one bash script (`set -euo pipefail`)
//! with `shoal` on PATH and the repository as the working directory; a block that fails
//! fails the test, naming the block and showing what it printed.

use shoal_e2e::{require_e2e, Cluster};

/// The ```sh blocks of a Markdown text, with the line each starts on.
fn sh_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) if line.trim() == "```sh" => current = Some((i + 1, String::new())),
            (Some(_), true) => blocks.extend(current.take()),
            (Some((_, text)), false) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn sh_blocks_are_found_in_order() {
    let md = "a\n```sh\necho 1\n```\n```text\nnot run\n```\n```sh\necho 2\necho 3\n```\n";
    assert_eq!(
        sh_blocks(md),
        vec![
            (2, "echo 1\n".to_string()),
            (8, "echo 2\necho 3\n".to_string())
        ]
    );
}

#[test]
fn every_command_of_the_tutorial_runs_on_the_local_cluster() {
    require_e2e!();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tutorial.md"))
        .expect("docs/tutorial.md");
    let blocks = sh_blocks(&text);
    assert!(
        blocks.len() >= 8,
        "the tutorial has {} sh blocks",
        blocks.len()
    );
    let c = Cluster::up(3);
    for (line, script) in &blocks {
        eprintln!("\n=== docs/tutorial.md:{line}\n{script}");
        let run = c.script(script);
        eprintln!("{}{}", run.stdout, run.stderr);
        assert_eq!(
            run.code, 0,
            "the block at docs/tutorial.md:{line} failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
    }
}
