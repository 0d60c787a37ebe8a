//! The orchestrator's writes as plain values ([`Write`]), and the one function that turns
//! a transaction of them into an etcd transaction ([`txn`]). See docs/architecture.md
//! ("Controller").

use std::net::Ipv4Addr;
use std::sync::Arc;

use shoal_api_types::keys::Keys;
use shoal_api_types::{Service, Task};

use crate::reconcile::TaskRecord;

use crate::endpoints::EndpointsChange;
use crate::ipam::Release;
use shoal_store::Batch;

/// One write a service reconcile decides. A `Vec<Write>` commits all or nothing; every
/// write of an existing object is compared on the revision it was read at, every claim on
/// the key not existing. New tasks are not among them: the scheduler's pass writes those
/// (see [`super::tasks::Created`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Write a task (its desired state).
    UpdateTask(Task),
    /// Delete a task.
    DeleteTask(Arc<TaskRecord>),
    /// Write the service (its status).
    UpdateService(Service),
    /// Change an Endpoints object.
    Endpoints(EndpointsChange),
    /// Claim `ip` on `network` for `owner` (a task id or `vip/<service>`).
    Claim {
        /// The network.
        network: String,
        /// The address.
        ip: Ipv4Addr,
        /// Who holds it.
        owner: String,
    },
    /// Release an address claim.
    Release(Release),
}

/// One transaction of `writes`.
pub fn txn(keys: &Keys, writes: Vec<Write>) -> Batch {
    let mut txn = Batch::new();
    for w in writes {
        match w {
            Write::UpdateTask(t) => txn.update(keys, &t),
            Write::DeleteTask(t) => txn.delete_raw(t.key(keys), t.metadata.revision),
            Write::UpdateService(s) => txn.update(keys, &s),
            Write::Endpoints(EndpointsChange::Create(e)) => {
                txn.create(keys, &e);
            }
            Write::Endpoints(EndpointsChange::Update(e)) => txn.update(keys, &e),
            Write::Endpoints(EndpointsChange::Delete(e)) => txn.delete(keys, e.as_ref()),
            Write::Claim { network, ip, owner } => txn.claim(keys.ip(&network, ip), &owner),
            Write::Release(r) => txn.delete_raw(keys.ip(&r.network, r.ip), r.revision),
        }
    }
    txn
}
