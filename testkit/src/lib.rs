//! Shared test support for every Shoal crate (a dev-dependency, and a dependency of `e2e`,
//! whose `shoal-bench` shares the skip rule and [`free_port`]; it depends on no Shoal crate,
//! so any crate can use it).
//!
//! **Prerequisites.** Tests that need root or programs on the machine start with
//! [`require!`]: when something is missing the test prints `SKIPPED <test>: <why>` and
//! returns — unless [`REQUIRED_ENV`] (`SHOAL_TESTS_REQUIRED=1`) is set, as `scripts/test`
//! sets it when it runs as root, where a missing prerequisite fails the test with a message
//! naming the test and what is missing. A green run with the variable set therefore means
//! every test ran. Checks *inside* a test never skip: list what they need in `require!`.
//!
//! **Helpers.** [`free_port`] (a free loopback TCP port) and [`eventually`] (poll with a
//! deadline on tokio's clock, so paused-time tests work).
//!
//! **Generators.** [`gen`]: proptest strategies for objects, mutations and garbage text,
//! shared by the property tests of the manifest parser, the compose loader and the API.

pub mod gen;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// With this variable set to `1`, a missing prerequisite fails the test instead of skipping it.
pub const REQUIRED_ENV: &str = "SHOAL_TESTS_REQUIRED";

/// Whether every test must run (`SHOAL_TESTS_REQUIRED=1`).
pub fn required() -> bool {
    std::env::var(REQUIRED_ENV).as_deref() == Ok("1")
}

/// Whether this process runs as root (effective uid 0; `/proc/self` belongs to it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Where `program` is: on `PATH`, else in `/usr/sbin` or `/sbin` (root's tools live there
/// and a plain user's `PATH` often lacks them).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// Whether `program` can be found (see [`which`]).
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The prerequisites of one test, built by [`require!`]; [`Needs::skip`] decides.
#[derive(Debug)]
pub struct Needs {
    test: String,
    missing: Vec<String>,
}

impl Needs {
    /// Prerequisites of the test `test` (a path such as `net_overlay::overlay_should_…`;
    /// `::{{closure}}` segments and a trailing helper item are removed).
    pub fn new(test: &str) -> Needs {
        let test = test
            .strip_suffix("::__shoal_testkit_here")
            .unwrap_or(test)
            .replace("::{{closure}}", "");
        Needs {
            test,
            missing: Vec::new(),
        }
    }

    /// The test's name, as shown in messages.
    pub fn test(&self) -> &str {
        &self.test
    }

    /// Needs root.
    pub fn root(mut self) -> Needs {
        if !is_root() {
            self.missing
                .push("root (network namespaces, links, nftables, containers)".into());
        }
        self
    }

    /// Needs these programs (see [`which`]).
    pub fn tools<'a>(mut self, programs: impl IntoIterator<Item = &'a str>) -> Needs {
        for p in programs {
            if !have(p) {
                self.missing.push(format!(
                    "`{p}` (not found; ./scripts/install-deps installs it)"
                ));
            }
        }
        self
    }

    /// Needs whatever a check of the test's own says is missing (`None`: nothing).
    pub fn also(mut self, missing: Option<String>) -> Needs {
        self.missing.extend(missing);
        self
    }

    /// Why the test cannot run here, if it cannot.
    pub fn missing(&self) -> Option<String> {
        (!self.missing.is_empty()).then(|| self.missing.join(", "))
    }

    /// `true` when the test must return now (a prerequisite is missing and tests are not
    /// required: says so on stderr). Panics, naming the test and what is missing, when
    /// something is missing and [`REQUIRED_ENV`] is set (reported at the caller: the test).
    #[track_caller]
    pub fn skip(&self) -> bool {
        let Some(why) = self.missing() else {
            return false;
        };
        if required() {
            panic!(
                "{}: cannot run, {REQUIRED_ENV}=1 and it needs: {why}",
                self.test
            );
        }
        eprintln!("SKIPPED {}: needs {why}", self.test);
        true
    }
}

/// Returns early from the calling test (a function returning `()`) when a prerequisite is
/// missing, or fails it when [`REQUIRED_ENV`] is set. Each argument names a [`Needs`] method:
///
/// ```no_run
/// fn dns_should_answer_in_a_task_namespace() {
///     shoal_testkit::require!(root, tools = ["ip", "dig"]);
///     // … runs only with root, `ip` and `dig` …
/// }
///
/// fn runtime_should_run_a_container() {
///     let busybox = (!std::path::Path::new("/bin/busybox").exists())
///         .then(|| "/bin/busybox".to_string());
///     shoal_testkit::require!(root, tools = ["containerd", "runc"], also = busybox);
/// }
/// ```
///
/// The test's name comes from the enclosing function.
#[macro_export]
macro_rules! require {
    ($($need:ident $(= $value:expr)?),+ $(,)?) => {{
        fn __shoal_testkit_here() {}
        if $crate::Needs::new(::std::any::type_name_of_val(&__shoal_testkit_here))
            $( .$need($($value)?) )+
            .skip()
        {
            return;
        }
    }};
}

/// A loopback TCP port that was free a moment ago, for a server started next (etcd, a
/// registry). It is taken from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), because a port the OS picks for `bind(0)` comes from
/// that range, which is also where every outgoing connection's source port comes from: a
/// busy test (a thousand hollow agents connecting to etcd) could take it as a source port
/// before the server binds it ("address already in use"). Below the range, only another
/// explicit bind can take it. Callers in one process get different ports (a shared cursor),
/// and processes start at different points (their pid).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = ports_below_ephemeral();
    let span = u32::from(high - low);
    for _ in 0..span {
        let offset = std::process::id().wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports [`free_port`] picks from: 10000 up to the start of the kernel's ephemeral
/// range (32768, Linux's default, if it cannot be read).
fn ports_below_ephemeral() -> (u16, u16) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10000, first_ephemeral.max(11000))
}

/// Polls `check` every 50 ms until it returns `Some`; panics naming `what` after `timeout`
/// (measured on tokio's clock).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_should_be_below_the_ephemeral_range_bindable_and_new_each_time() {
        let (low, high) = ports_below_ephemeral();
        let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("Linux has the ephemeral range")
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("a number");
        assert_eq!(high, first.max(11000));
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for p in &ports {
            assert!((low..high).contains(p), "{p} not in {low}..{high}");
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("still free");
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn needs_should_name_the_test_without_closures_or_the_helper() {
        let n = Needs::new("net_overlay::a_test::{{closure}}::__shoal_testkit_here");
        assert_eq!(n.test(), "net_overlay::a_test");
    }

    #[test]
    fn needs_should_list_every_missing_program() {
        let n = Needs::new("t").tools(["sh", "no-such-program-x", "no-such-program-y"]);
        let why = n.missing().expect("two programs are missing");
        assert!(why.contains("no-such-program-x") && why.contains("no-such-program-y"));
        assert!(!why.contains("`sh`"), "{why}");
        assert_eq!(Needs::new("t").tools(["sh"]).also(None).missing(), None);
    }

    #[test]
    fn require_should_skip_or_fail_when_a_program_is_missing() {
        fn skipping(ran: &mut bool) {
            require!(tools = ["no-such-program-z"]);
            *ran = true;
        }
        // The only test here that reads the variable, so no other test races on it.
        let mut ran = false;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| skipping(&mut ran)));
        assert!(!ran, "a test with a missing program never runs its body");
        if required() {
            let err = result.expect_err("required: a missing program fails the test");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains(
                    "tests::require_should_skip_or_fail_when_a_program_is_missing::skipping"
                ) && msg.contains("no-such-program-z"),
                "{msg}"
            );
        } else {
            assert!(result.is_ok(), "not required: the test returns early");
        }
    }
}
