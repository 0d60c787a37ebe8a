//! Figures on the 3-node local cluster (`shoal dev up`): 1 convergence, 4 data plane, 7
//! endpoint propagation to every node's view.

use std::path::Path;

use anyhow::Result;

use crate::common::*;

/// Runs the local-cluster figures.
pub async fn run(_bin: &Path, _quick: bool, figs: &[u32], rows: &mut Vec<Row>) -> Result<()> {
    for f in figs {
        rows.push(Row::skipped(&format!("{f} local cluster"), "-", "not yet"));
    }
    Ok(())
}
