//! Label names Shoal writes, in one `shoal.io/…` form: on Task objects (by the controller)
//! and on containers (by the node agent). Readers and writers use these constants, never
//! the strings. See docs/architecture.md ("Labels").

/// The node a task is for or runs on. On a global service's Task: the only node the
/// scheduler may place it on. On a container: the node that created it.
pub const NODE: &str = "shoal.io/node";
/// The service a container's task belongs to.
pub const SERVICE: &str = "shoal.io/service";
/// The task (its id) a container runs.
pub const TASK: &str = "shoal.io/task";
/// On a Task: restarts in its slot before it (0 for the first), for
/// `restartPolicy.maxAttempts`.
pub const ATTEMPT: &str = "shoal.io/attempt";
/// On the Networks, Services, Secrets and Configs a stack deploy creates: the stack's
/// name (`shoal stack ls/services/ps/rm` and `apply?prune=` select by it).
pub const STACK: &str = "shoal.io/stack";
