//! Shared helpers of the root-only namespace tests (`dns_netns`, `lb_netns`; they start with
//! `shoal_testkit::require!`): namespaces with
//! a unique per-run prefix that a guard deletes (also when a test fails), commands that must
//! succeed, threads inside a namespace, and TCP responders living in a namespace.
//!
//! Nothing here touches the root namespace: links are created inside test namespaces (`ip -n`),
//! the "switch" is a bridge in a namespace of its own.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Run a command that must succeed; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command; returns (success, stdout, stderr).
pub fn try_sh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A unique prefix for this run: `shoal-t<random>-`.
pub fn prefix() -> String {
    format!("shoal-t{:06x}-", rand::random::<u32>() & 0xff_ffff)
}

/// Namespaces made by one test; dropping deletes them all (and with them every link in them).
pub struct Namespaces {
    pub prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Namespaces {
            prefix: prefix(),
            names: Vec::new(),
        }
    }

    /// Create `<prefix><short>` with loopback up; returns its full name.
    pub fn add(&mut self, short: &str) -> String {
        let name = format!("{}{short}", self.prefix);
        sh(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// The path of a namespace made here.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Run `f` on a thread inside namespace `name` and wait for it.
pub fn in_ns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let file = File::open(Namespaces::path(name)).expect("open namespace");
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// A TCP responder inside a namespace: answers every connection with `reply` and closes.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &str, addr: SocketAddr, reply: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let file = File::open(Namespaces::path(ns)).expect("open namespace");
        let reply = reply.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(addr).expect("bind responder");
            listener.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("responder did not start");
        Responder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bridge ("switch") in namespace `switch` and, for each `(ns, cidr)`, a veth from the
/// switch to `eth0` in `ns` with that address.
pub fn wire(switch: &str, hosts: &[(&str, &str)]) {
    sh(&["ip", "-n", switch, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", switch, "link", "set", "br0", "up"]);
    for (i, (ns, cidr)) in hosts.iter().enumerate() {
        let port = format!("p{i}");
        sh(&[
            "ip", "-n", switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ]);
        sh(&[
            "ip", "-n", switch, "link", "set", &port, "master", "br0", "up",
        ]);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }
}

/// A fake upstream resolver: answers every A question with 192.0.2.7 (UDP and TCP).
pub async fn fake_upstream() -> SocketAddr {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    fn reply(q: &[u8]) -> Vec<u8> {
        let q = hickory_proto::op::Message::from_vec(q).unwrap();
        let mut r = hickory_proto::op::Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.recursion_available = true;
        let name = q.queries[0].name().clone();
        r.add_query(q.queries[0].clone());
        r.add_answer(hickory_proto::rr::Record::from_rdata(
            name,
            60,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 7)),
        ));
        r.to_vec().unwrap()
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&reply(&buf[..n]), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let len = s.read_u16().await.unwrap() as usize;
            let mut q = vec![0u8; len];
            s.read_exact(&mut q).await.unwrap();
            let r = reply(&q);
            s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&r).await.unwrap();
        }
    });
    addr
}
