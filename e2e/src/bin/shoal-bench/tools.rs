//! Hidden subcommands the tool runs inside namespaces with `ip netns exec`: a TCP echo
//! backend, a keep-alive HTTP server ([`crate::serve`]), a connection-latency probe, a closed-loop DNS load generator, a bulk TCP
//! sender/receiver, and a paced HTTP load that counts failed requests. Each prints
//! `key=value` pairs. All loads are bounded in count or time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::pct;

/// Runs a hidden subcommand; `None` when `args` is not one.
pub fn dispatch(args: &[String]) -> Option<Result<()>> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Some(match a.as_slice() {
        ["__echo", addr] => echo(addr),
        ["__rtt", addr, n] => rtt(addr, n.parse().unwrap_or(1000)),
        ["__dnsload", server, name, secs, conc] => dns_load(
            server,
            name,
            secs.parse().unwrap_or(1.0),
            conc.parse().unwrap_or(1),
        ),
        ["__sink", addr] => sink(addr),
        ["__http", addr] => http(addr),
        ["__httpwait", secs] => http_wait(secs.parse().unwrap_or(60.0)),
        ["__serve", addr] => crate::serve::serve(addr),
        ["__seen", name, ip, secs] => seen(name, ip, secs.parse().unwrap_or(30.0)),
        ["__blast", addr, secs] => blast(addr, secs.parse().unwrap_or(3.0)),
        ["__lbtrace", every_ms, secs, stop] => lb_trace(
            every_ms.parse().unwrap_or(100),
            secs.parse().unwrap_or(60.0),
            stop,
        ),
        ["__httpload", addr, rate, conc, secs, stop] => http_load(
            addr,
            rate.parse().unwrap_or(50.0),
            conc.parse().unwrap_or(4),
            secs.parse().unwrap_or(60.0),
            stop,
        ),
        _ if a.first().is_some_and(|s| s.starts_with("__")) => {
            Err(anyhow::anyhow!("unknown hidden subcommand {a:?}"))
        }
        _ => return None,
    })
}

fn echo(addr: &str) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn rtt(addr: &str, n: usize) -> Result<()> {
    let mut v = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(
                &addr.parse().map_err(std::io::Error::other)?,
                Duration::from_secs(1),
            )?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(())
        })();
        match ok {
            Ok(()) => v.push(t.elapsed().as_secs_f64() * 1e6),
            Err(_) => errors += 1,
        }
    }
    if v.is_empty() {
        bail!("no connection to {addr} succeeded");
    }
    println!(
        "p50_us={:.1} p99_us={:.1} errors={errors}",
        pct(&mut v.clone(), 50.0),
        pct(&mut v, 99.0)
    );
    Ok(())
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_load(server: &str, name: &str, secs: f64, conc: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut handles = vec![];
    for t in 0..conc {
        let (server, name) = (server.to_string(), name.to_string());
        handles.push(std::thread::spawn(move || -> Result<(Vec<f64>, usize)> {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.connect(&server)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let (mut lat, mut errors) = (vec![], 0usize);
            let mut id = (t as u16).wrapping_mul(7919);
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                let q = query(id, &name);
                let t0 = Instant::now();
                s.send(&q)?;
                loop {
                    match s.recv(&mut buf) {
                        Ok(n) if n >= 12 && buf[0] == (id >> 8) as u8 && buf[1] == id as u8 => {
                            let rcode = buf[3] & 0x0f;
                            let ancount = u16::from_be_bytes([buf[6], buf[7]]);
                            if rcode == 0 && ancount > 0 {
                                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                            } else {
                                errors += 1;
                            }
                            break;
                        }
                        Ok(_) => continue,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
            }
            Ok((lat, errors))
        }));
    }
    let (mut all, mut errors) = (vec![], 0);
    for h in handles {
        let (l, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        all.extend(l);
        errors += e;
    }
    let el = start.elapsed().as_secs_f64();
    let ok = all.len();
    println!(
        "ok={ok} qps={:.0} p50_us={:.1} p99_us={:.1} errors={errors}",
        ok as f64 / el,
        pct(&mut all.clone(), 50.0),
        pct(&mut all, 99.0)
    );
    Ok(())
}

fn sink(addr: &str) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn blast(addr: &str, secs: f64) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    let buf = vec![0x5au8; 1 << 17];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut b = [0u8; 1];
    let _ = s.read(&mut b);
    let el = start.elapsed().as_secs_f64();
    println!("gbps={:.2} bytes={sent}", sent as f64 * 8.0 / el / 1e9);
    Ok(())
}

fn http(addr: &str) -> Result<()> {
    // A short connect timeout: a SYN sent before the VIP rules exist would otherwise wait
    // for TCP's 1 s retransmission, and the caller retries anyway.
    http_get(addr, Duration::from_millis(100))
}

/// Prints `ready`, reads an address from stdin, then tries `GET /` on it every 5 ms
/// (connect timeout 50 ms) until an HTTP 200 (prints `ok`) or `secs` pass (fails). One
/// process per wait instead of one per try: started before the clock runs, it costs the
/// measured path neither a process start nor a namespace entry.
fn http_wait(secs: f64) -> Result<()> {
    println!("ready");
    std::io::stdout().flush()?;
    let mut addr = String::new();
    std::io::stdin().read_line(&mut addr)?;
    let addr = addr.trim();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut last = None;
    while Instant::now() < deadline {
        match http_get(addr, Duration::from_millis(50)) {
            Ok(()) => {
                println!("ok");
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("no HTTP 200 from {addr} within {secs} s: {last:?}")
}

fn http_get(addr: &str, connect: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, connect)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out[..out.len().min(16)]).into_owned();
    if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
        bail!("no HTTP 200 from {addr}: {head:?}");
    }
    Ok(())
}

/// The A records of a DNS response.
fn a_records(buf: &[u8]) -> Vec<std::net::Ipv4Addr> {
    fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let l = *b.get(i)? as usize;
            if l == 0 {
                return Some(i + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + l;
        }
    }
    let mut out = vec![];
    if buf.len() < 12 {
        return out;
    }
    let (qd, an) = (
        u16::from_be_bytes([buf[4], buf[5]]),
        u16::from_be_bytes([buf[6], buf[7]]),
    );
    let mut i = 12;
    for _ in 0..qd {
        let Some(j) = skip_name(buf, i) else {
            return out;
        };
        i = j + 4;
    }
    for _ in 0..an {
        let Some(j) = skip_name(buf, i) else {
            return out;
        };
        if j + 10 > buf.len() {
            return out;
        }
        let ty = u16::from_be_bytes([buf[j], buf[j + 1]]);
        let len = u16::from_be_bytes([buf[j + 8], buf[j + 9]]) as usize;
        if ty == 1 && len == 4 && j + 14 <= buf.len() {
            out.push(std::net::Ipv4Addr::new(
                buf[j + 10],
                buf[j + 11],
                buf[j + 12],
                buf[j + 13],
            ));
        }
        i = j + 10 + len;
    }
    out
}

/// Waits until `ip` is in the A records of `name` at 127.0.0.11 and in this namespace's VIP
/// rules; prints the wall-clock time (unix ms) of each.
fn seen(name: &str, ip: &str, secs: f64) -> Result<()> {
    let want: std::net::Ipv4Addr = ip.parse()?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect("127.0.0.11:53")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let (mut dns_at, mut lb_at) = (None, None);
    let mut id = 1u16;
    let mut buf = [0u8; 1500];
    while (dns_at.is_none() || lb_at.is_none()) && Instant::now() < deadline {
        if dns_at.is_none() {
            id = id.wrapping_add(1);
            s.send(&query(id, name))?;
            if let Ok(n) = s.recv(&mut buf) {
                if a_records(&buf[..n]).contains(&want) {
                    dns_at = Some(now_ms());
                }
            }
        }
        if lb_at.is_none() {
            let out = std::process::Command::new("nft")
                .args(["-j", "list", "table", "ip", "shoal_lb"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).contains(&format!("\"{ip}\"")) {
                lb_at = Some(now_ms());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match (dns_at, lb_at) {
        (Some(d), Some(l)) => println!("dns_ms={d:.1} lb_ms={l:.1}"),
        _ => bail!("{ip} not seen in time (dns {dns_at:?}, lb {lb_at:?})"),
    }
    Ok(())
}

/// One HTTP/1.0 GET on a new connection; `Err((kind, detail))` unless it answers 200.
fn get_once(addr: &std::net::SocketAddr) -> std::result::Result<(), (&'static str, String)> {
    let io = |e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => "reset",
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                "unreachable"
            }
            _ => "other",
        };
        (kind, e.to_string())
    };
    // 3 s: one lost SYN (retransmitted after 1 s) is slow, not failed. A failure names the
    // source port, which the kernel picks at connect: shoal-chaos finds the connection's
    // conntrack entry (where it was sent) by it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(io)?;
    let port = |s: &socket2::Socket| {
        s.local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map_or(0, |a| a.port())
    };
    let io = |s: &socket2::Socket| {
        let port = port(s);
        move |e: std::io::Error| {
            let (kind, detail) = io(e);
            (kind, format!("{detail} (from port {port})"))
        }
    };
    s.connect_timeout(&(*addr).into(), Duration::from_secs(3))
        .map_err(io(&s))?;
    let io = io(&s);
    let mut s = TcpStream::from(s);
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(io)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(io)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(io)?;
    let head = String::from_utf8_lossy(&out[..out.len().min(16)]).into_owned();
    if head.is_empty() {
        return Err(("empty", "connection closed without an answer".into()));
    }
    if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
        return Err(("status", head));
    }
    Ok(())
}

/// HTTP load that counts failures: `conc` workers, each sending one GET on a new connection
/// (so every request is balanced anew) every `conc / rate` seconds (closed loop: never more
/// than one outstanding per worker), until the file `stop` exists or `secs` pass. Prints
/// `sent ok failed slow p50_ms p99_ms max_ms start_ms end_ms` (unix ms for the window) and
/// one `fail=<unix ms>,<kind>,<detail>` line per failure (the first 200).
fn http_load(addr: &str, rate: f64, conc: usize, secs: f64, stop: &str) -> Result<()> {
    let target: std::net::SocketAddr = addr.parse()?;
    let conc = conc.max(1);
    let interval = Duration::from_secs_f64(conc as f64 / rate.max(0.1));
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs_f64(secs);
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let start_ms = unix_ms();
    let mut handles = vec![];
    for w in 0..conc {
        let stop = std::path::PathBuf::from(stop);
        handles.push(std::thread::spawn(move || {
            let (mut lat, mut fails) = (Vec::<f64>::new(), Vec::<(f64, &str, String)>::new());
            let mut next = begin + interval.mul_f64(w as f64 / conc as f64);
            loop {
                let now = Instant::now();
                if now >= deadline || stop.exists() {
                    break;
                }
                if next > now {
                    std::thread::sleep(next - now);
                }
                next = (next + interval).max(Instant::now());
                let (t0, at) = (Instant::now(), unix_ms());
                match get_once(&target) {
                    Ok(()) => lat.push(t0.elapsed().as_secs_f64() * 1000.0),
                    Err((kind, detail)) => fails.push((at, kind, detail)),
                }
            }
            (lat, fails)
        }));
    }
    let (mut lat, mut fails) = (vec![], vec![]);
    for h in handles {
        let (l, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        lat.extend(l);
        fails.extend(f);
    }
    let end_ms = unix_ms();
    fails.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let ok = lat.len();
    let slow = lat.iter().filter(|l| **l > 1000.0).count();
    let max = lat.iter().cloned().fold(0.0f64, f64::max);
    println!(
        "sent={} ok={ok} failed={} slow={slow} p50_ms={:.2} p99_ms={:.2} max_ms={max:.1} start_ms={start_ms:.0} end_ms={end_ms:.0}",
        ok + fails.len(),
        fails.len(),
        pct(&mut lat.clone(), 50.0),
        pct(&mut lat, 99.0),
    );
    for (at, kind, detail) in fails.iter().take(200) {
        println!("fail={at:.0},{kind},{}", detail.replace(['\n', '\r'], " "));
    }
    Ok(())
}

/// The IPv4 addresses written in `text`, in order, without repeats.
pub fn ipv4s(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for word in text.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        let parts: Vec<&str> = word.split('.').collect();
        if parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.parse::<u8>().is_ok())
            && !out.iter().any(|o| o == word)
        {
            out.push(word.to_string());
        }
    }
    out
}

/// Every `every_ms`, until the file `stop` exists or `secs` pass, lists this namespace's
/// nftables ruleset and prints `<unix ms> <addresses>` whenever the set of IPv4 addresses in
/// it changed: when each backend entered and left this namespace's load balancer.
fn lb_trace(every_ms: u64, secs: f64, stop: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut last: Option<Vec<String>> = None;
    while Instant::now() < deadline && !std::path::Path::new(stop).exists() {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .output()?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let mut ips = ipv4s(&String::from_utf8_lossy(&out.stdout));
        ips.sort();
        if last.as_ref() != Some(&ips) {
            println!("{at:.0} {}", ips.join(","));
            last = Some(ips);
        }
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    Ok(())
}
