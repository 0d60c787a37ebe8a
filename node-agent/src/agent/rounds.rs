//! What one converge round plans: every task of the node ([`Scope::All`]) or only those
//! that may need something new ([`Scope::Only`]), and [`plan_round`], the pure plan of a
//! round over that scope. [`Pending`] collects the scope between rounds.
//!
//! A node with a thousand tasks gets a watch event per status write of each of them; if
//! every round planned every task, the work per node would grow with the square of its
//! tasks. Instead a round plans only what may have changed since the last one:
//! - the tasks the watch put or deleted (the reflector's [`ChangeLog`], taken while the
//!   round borrows the cache, so each change is either planned now or wakes the next round);
//! - the tasks whose operation finished (their containers changed, and a busy task is left
//!   out of the rounds while its operation runs);
//! - everything after a relist, a runtime notification (an exit the agent did not cause),
//!   a failed round and every resync: those plan [`Scope::All`] as before.
//!
//! Why that is enough: [`super::plan::plan`] decides each task from that task's desired
//! and observed state alone, so after a round every task it planned either needs nothing
//! or has an operation in flight, and only a change of one of those two states (each
//! recorded above) can make it need something.
//!
//! [`ChangeLog`]: shoal_store::ChangeLog

use std::collections::BTreeMap;

use foldhash::HashSet;
use shoal_api_types::Task;
use shoal_store::Changed;

use super::plan::{plan, Op};
use super::task_runtime::ObservedTask;

/// What a round plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every desired task, and everything the runtime has.
    All,
    /// Only the tasks of these ids (desired or observed).
    Only(Vec<String>),
}

/// What the next round must plan, collected between rounds. Starts as everything.
#[derive(Debug)]
pub struct Pending {
    all: bool,
    ids: HashSet<String>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            all: true,
            ids: HashSet::default(),
        }
    }
}

impl Pending {
    /// Adds what the watch changed.
    pub fn changed(&mut self, changed: Changed) {
        match changed {
            Changed::All => self.everything(),
            Changed::Names(names) if !self.all => self.ids.extend(names),
            Changed::Names(_) => {}
        }
    }

    /// Adds one task (its operation finished).
    pub fn task(&mut self, id: &str) {
        if !self.all && !self.ids.contains(id) {
            self.ids.insert(id.to_string());
        }
    }

    /// The next round plans everything.
    pub fn everything(&mut self) {
        self.all = true;
        self.ids.clear();
    }

    /// The scope of the round about to run; the next one starts empty.
    pub fn take(&mut self) -> Scope {
        if std::mem::take(&mut self.all) {
            self.ids.clear();
            return Scope::All;
        }
        Scope::Only(self.ids.drain().collect())
    }
}

/// The operations of a round over `scope`: [`plan`] of the desired tasks in scope that are
/// not `busy` (an operation of theirs is in flight) against `observed` (what the runtime
/// has of the tasks in scope; everything for [`Scope::All`]), without operations on busy
/// tasks. An observed task in scope that is not desired is removed.
pub fn plan_round(
    desired: &BTreeMap<String, Task>,
    scope: &Scope,
    busy: &HashSet<String>,
    observed: &[ObservedTask],
) -> Vec<Op> {
    // Tasks with an operation in flight are left out before planning, so a node with a
    // thousand queued starts does not build (and drop) a thousand operations; their
    // containers look undesired to `plan`, and the removals that yields are dropped too.
    let ops = match scope {
        Scope::All => plan(
            desired.values().filter(|t| !busy.contains(t.name())),
            observed,
        ),
        Scope::Only(ids) => plan(
            ids.iter()
                .filter(|id| !busy.contains(id.as_str()))
                .filter_map(|id| desired.get(id)),
            observed,
        ),
    };
    ops.into_iter()
        .filter(|op| !busy.contains(op.task_id()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::apply::advance;
    use crate::agent::plan::StatusUpdate;
    use crate::agent::task_runtime::ObservedState;
    use shoal_api_types::{TaskSpec, TaskState};
    use shoal_store::{delete_logged, put_logged, Cache, ChangeLog};

    fn task(id: &str, desired: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.status.state = TaskState::Assigned;
        t
    }

    fn sorted(mut ops: Vec<Op>) -> Vec<Op> {
        ops.sort_by(|a, b| a.task_id().cmp(b.task_id()));
        ops
    }

    /// The node as the converge loop sees it: the watch's cache (changed only through the
    /// reflector's logged puts and deletes) and a runtime that applies operations at once.
    struct Node {
        cache: Cache<TaskSpec>,
        log: ChangeLog,
        runtime: BTreeMap<String, ObservedTask>,
        pending: Pending,
    }

    impl Node {
        fn new() -> Self {
            let log = ChangeLog::new();
            let mut cache = None;
            // The first list: everything is new.
            cache.replace(BTreeMap::new());
            log.record_all();
            Node {
                cache,
                log,
                runtime: BTreeMap::new(),
                pending: Pending::default(),
            }
        }

        fn put(&mut self, t: Task) {
            put_logged(&mut self.cache, t, Some(&self.log));
        }

        fn delete(&mut self, id: &str) {
            delete_logged(&mut self.cache, id, Some(&self.log));
        }

        fn observed(&self, scope: &Scope) -> Vec<ObservedTask> {
            match scope {
                Scope::All => self.runtime.values().cloned().collect(),
                Scope::Only(ids) => ids
                    .iter()
                    .filter_map(|id| self.runtime.get(id).cloned())
                    .collect(),
            }
        }

        /// One round: its operations, checked against a full plan of the same state, then
        /// applied (status writes come back through the watch, as etcd's would).
        fn round(&mut self) -> Vec<Op> {
            self.pending.changed(self.log.take());
            let scope = self.pending.take();
            let desired = self.cache.clone().unwrap();
            let busy = HashSet::default();
            let ops = plan_round(&desired, &scope, &busy, &self.observed(&scope));
            let full = plan_round(&desired, &Scope::All, &busy, &self.observed(&Scope::All));
            assert_eq!(
                sorted(ops.clone()),
                sorted(full),
                "the round over {scope:?} planned other operations than a full plan"
            );
            for op in &ops {
                self.apply(op);
                self.pending.task(op.task_id());
            }
            ops
        }

        fn apply(&mut self, op: &Op) {
            match op {
                Op::Start(t) => {
                    let id = t.name().to_string();
                    self.runtime
                        .insert(id.clone(), ObservedTask::running(id.clone(), id));
                }
                Op::Stop { id, .. } => {
                    self.runtime.get_mut(id).unwrap().state =
                        ObservedState::Exited { exit_code: 0 };
                }
                Op::Remove { id } => {
                    self.runtime.remove(id);
                }
                Op::Report { id, update } => self.report(id, update),
            }
        }

        fn report(&mut self, id: &str, update: &StatusUpdate) {
            let Some(mut t) = self.cache.as_ref().unwrap().get(id).cloned() else {
                return;
            };
            if advance(&mut t.status, update, chrono::Utc::now()) {
                self.put(t);
            }
        }

        fn settle(&mut self) {
            for _ in 0..10 {
                if self.round().is_empty() {
                    return;
                }
            }
            panic!("no convergence in 10 rounds");
        }

        fn state(&self, id: &str) -> Option<TaskState> {
            self.cache.as_ref().unwrap().get(id).map(|t| t.status.state)
        }
    }

    #[test]
    fn a_round_should_plan_every_change_a_full_plan_would_and_nothing_else() {
        let mut node = Node::new();
        for i in 0..20 {
            node.put(task(&format!("t{i}"), TaskState::Running));
        }
        node.settle();
        assert!((0..20).all(|i| node.state(&format!("t{i}")) == Some(TaskState::Running)));
        assert_eq!(
            node.round(),
            vec![],
            "converged: nothing changed, nothing planned"
        );

        // Changes between two rounds: deleted, wanted stopped, new, an exit the runtime
        // reports by itself (a full round), and untouched tasks.
        node.delete("t3");
        let mut t5 = node.cache.as_ref().unwrap()["t5"].clone();
        t5.spec.desired_state = TaskState::Shutdown;
        node.put(t5);
        node.put(task("new", TaskState::Running));
        let ops = sorted(node.round());
        let ids: Vec<&str> = ops.iter().map(Op::task_id).collect();
        assert_eq!(ids, vec!["new", "t3", "t5"]);
        assert!(matches!(ops[1], Op::Remove { .. }), "{ops:?}");
        node.settle();
        assert!(
            !node.runtime.contains_key("t3"),
            "a deleted task is removed"
        );
        assert_eq!(node.state("t5"), Some(TaskState::Shutdown));
        assert_eq!(node.state("new"), Some(TaskState::Running));

        node.runtime.get_mut("t7").unwrap().state = ObservedState::Exited { exit_code: 2 };
        node.pending.everything();
        node.settle();
        assert_eq!(node.state("t7"), Some(TaskState::Failed));
    }

    #[test]
    fn a_relist_should_plan_everything() {
        let mut node = Node::new();
        node.put(task("a", TaskState::Running));
        node.settle();
        // A container the agent does not know (left from before a restart) is found by
        // the full round a relist makes.
        node.runtime
            .insert("stray".into(), ObservedTask::running("stray", "c"));
        node.log.record_all();
        assert_eq!(node.round(), vec![Op::Remove { id: "stray".into() }]);
    }

    #[test]
    fn a_round_should_leave_busy_tasks_out() {
        let desired = BTreeMap::from([
            ("a".to_string(), task("a", TaskState::Running)),
            ("b".to_string(), task("b", TaskState::Running)),
        ]);
        let busy: HashSet<String> = ["a".to_string()].into_iter().collect();
        let observed = [ObservedTask::running("a", "c-a")];
        for scope in [Scope::All, Scope::Only(vec!["a".into(), "b".into()])] {
            let ops = plan_round(&desired, &scope, &busy, &observed);
            assert_eq!(ops.len(), 1, "{scope:?}: {ops:?}");
            assert_eq!(ops[0].task_id(), "b");
        }
    }

    #[test]
    fn pending_should_collect_changes_until_taken() {
        let mut p = Pending::default();
        assert_eq!(p.take(), Scope::All, "the first round plans everything");
        assert_eq!(p.take(), Scope::Only(vec![]));
        p.changed(Changed::Names(["a".to_string()].into_iter().collect()));
        p.task("b");
        p.task("a");
        let Scope::Only(mut ids) = p.take() else {
            panic!("not all")
        };
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        p.task("c");
        p.changed(Changed::All);
        p.task("d");
        assert_eq!(p.take(), Scope::All);
    }
}
