//! Stacks, as Swarm's `docker stack deploy`: compose files read on the client
//! ([`load`]: parse, interpolate, merge) and turned into Networks, Services, Secrets and
//! Configs labelled `shoal.io/stack=<stack>` ([`convert`]). The server knows no Stack
//! object; a deploy is one all-or-nothing `POST /apply` (with `?prune=shoal.io/stack=NAME`
//! for `--prune` and `stack rm`).

pub mod convert;
pub mod interpolate;
pub mod load;

pub use convert::{convert, Inputs, Stack};
pub use load::ComposeFile;

/// The label selector value `prune` takes for stack `name`.
pub fn prune_selector(name: &str) -> String {
    format!("{}={name}", shoal_api_types::labels::STACK)
}

#[cfg(test)]
mod props;
