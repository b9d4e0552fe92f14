//! Health checks of the load balancer's backends (`health:` in lb.yaml): a
//! TCP connect, or an HTTP GET whose status must be the expected one, each
//! bounded by the check's timeout and run from the network namespace the
//! balancer's interfaces live in (where the backends are reachable).
//!
//! [`Tracker`] turns results into transitions: `fall` failures in a row take
//! an up backend down, `rise` successes in a row bring a down one back up.
//! The state itself lives in the kernel (lb_backends): the tracker starts
//! from it, so a restarted agent neither forgets a down backend nor moves an
//! up one. A backend the operator set to `drain` is the operator's: checks
//! still run and are counted, but never change it.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use moat_core::lb::{Check, Health, State};

/// What one check gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Why it failed (refused, timeout, status 500, ...).
    Fail(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
    /// `ok`, `fail` or `timeout` (metric label).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail(w) if w.contains("timed out") => "timeout",
            Outcome::Fail(_) => "fail",
        }
    }
}

/// Runs one check of backend `addr` in the calling thread's namespace.
pub fn check(addr: IpAddr, h: &Health) -> Outcome {
    let timeout = Duration::from_millis(h.timeout_ms.max(1));
    match &h.check {
        Check::Tcp { port } => {
            match TcpStream::connect_timeout(&SocketAddr::new(addr, *port), timeout) {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Fail(words(&e)),
            }
        }
        Check::Http { port, path, expect } => {
            http(SocketAddr::new(addr, *port), path, *expect, timeout)
        }
    }
}

fn words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// HTTP/1.1 GET with `Connection: close`, the whole exchange within
/// `timeout`; only the status line is needed.
fn http(to: SocketAddr, path: &str, expect: u16, timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(words(&e)),
    };
    let left = || {
        timeout
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_write_timeout(Some(left()));
    let host = match to {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        a => a.to_string(),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: moat-health\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Outcome::Fail(words(&e));
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let _ = s.set_read_timeout(Some(left()));
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::Fail(words(&e)),
        }
        if t0.elapsed() >= timeout {
            return Outcome::Fail("timed out".into());
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    // "HTTP/1.x NNN reason"
    let mut parts = line.split_whitespace();
    let status = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") => c,
        _ => return Outcome::Fail(format!("not an HTTP response ({:?})", shorten(line))),
    };
    if status == expect {
        Outcome::Ok
    } else {
        Outcome::Fail(format!("status {status}, expected {expect}"))
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Consecutive results of one backend and the state they lead to.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub state: State,
    pub fails: u32,
    pub oks: u32,
    pub last: Option<Outcome>,
}

impl Tracker {
    /// Starts from the state the kernel holds.
    pub fn new(state: State) -> Tracker {
        Tracker {
            state,
            fails: 0,
            oks: 0,
            last: None,
        }
    }

    /// Records one result; returns the state the backend must move to, if
    /// this result completes a `fall` or `rise` run.
    pub fn observe(&mut self, o: &Outcome, h: &Health) -> Option<State> {
        if o.is_ok() {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
        }
        self.last = Some(o.clone());
        match self.state {
            State::Up if self.fails >= h.fall.max(1) => Some(State::Down),
            State::Down if self.oks >= h.rise.max(1) => Some(State::Up),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(fall: u32, rise: u32) -> Health {
        Health {
            check: Check::Tcp { port: 1 },
            interval_ms: 100,
            timeout_ms: 100,
            fall,
            rise,
            reset_on_down: false,
        }
    }

    #[test]
    fn fall_and_rise_need_runs_in_a_row() {
        let h = h(3, 2);
        let fail = Outcome::Fail("connection refused".into());
        let mut t = Tracker::new(State::Up);
        assert_eq!(t.observe(&fail, &h), None);
        assert_eq!(t.observe(&fail, &h), None);
        // A success in between starts the count again.
        assert_eq!(t.observe(&Outcome::Ok, &h), None);
        assert_eq!(t.observe(&fail, &h), None);
        assert_eq!(t.observe(&fail, &h), None);
        assert_eq!(t.observe(&fail, &h), Some(State::Down));
        t.state = State::Down;
        assert_eq!(t.observe(&Outcome::Ok, &h), None);
        assert_eq!(t.observe(&fail, &h), None);
        assert_eq!(t.observe(&Outcome::Ok, &h), None);
        assert_eq!(t.observe(&Outcome::Ok, &h), Some(State::Up));
    }

    #[test]
    fn drain_is_never_changed_by_checks() {
        let h = h(1, 1);
        let mut t = Tracker::new(State::Drain);
        assert_eq!(t.observe(&Outcome::Fail("x".into()), &h), None);
        assert_eq!(t.observe(&Outcome::Ok, &h), None);
    }

    #[test]
    fn checks_against_real_sockets() {
        use std::net::TcpListener;
        // A TCP check: a listener passes, a closed port fails.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let tcp = |port| Health {
            check: Check::Tcp { port },
            ..h(1, 1)
        };
        assert_eq!(check("127.0.0.1".parse().unwrap(), &tcp(port)), Outcome::Ok);
        drop(l);
        assert!(!check("127.0.0.1".parse().unwrap(), &tcp(port)).is_ok());
        // HTTP: the expected status passes, another fails with its status.
        let serve = |status: u16| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b);
                    let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                }
            });
            port
        };
        let http = |port, expect| Health {
            check: Check::Http {
                port,
                path: "/healthz".into(),
                expect,
            },
            ..h(1, 1)
        };
        let p = serve(200);
        assert_eq!(
            check("127.0.0.1".parse().unwrap(), &http(p, 200)),
            Outcome::Ok
        );
        let p = serve(503);
        assert_eq!(
            check("127.0.0.1".parse().unwrap(), &http(p, 200)),
            Outcome::Fail("status 503, expected 200".into())
        );
        // A server that accepts and never answers: a timeout, in time.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let t0 = Instant::now();
        let o = check("127.0.0.1".parse().unwrap(), &http(p, 200));
        assert_eq!(o.label(), "timeout", "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(l);
    }
}
