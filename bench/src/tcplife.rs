//! The cost of a TCP connection's whole life (SYN to FIN) through a
//! stateful firewall: moat against nf_conntrack with the equivalent
//! nftables ruleset (`ct state established,related accept`, then the one
//! allowed port), and no filter. A client in namespace a opens connections
//! one after another to a server in b: connect, one request, one reply, the
//! server closes, the client closes. Each configuration has its own lab
//! (its own port space); rounds interleave them.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use moat_host::{
    netlab::{self, Lab, LabConfig},
    sys::NetnsGuard,
};

use crate::{live::nsrun, updates::Scratch};

pub const CONFIGS: [&str; 3] = ["no filter", "moat", "nftables conntrack"];
const PORT: u16 = 7000;

/// Connections per second of each configuration: median and range over rounds.
#[derive(Clone, Debug)]
pub struct LifeResult {
    pub config: &'static str,
    pub rate: f64,
    pub min: f64,
    pub max: f64,
}

struct Rig {
    lab: Lab,
    _scratch: Option<Scratch>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

const MOAT_POLICY: &str = "default: { ingress: deny, egress: allow }
rules:
  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [7000] }
";

const NFT: &str = "table inet bench {
 chain input { type filter hook input priority 0; policy drop;
  ct state established,related accept
  tcp dport 7000 accept
 }
 chain output { type filter hook output priority 0; policy accept; }
}
";

fn rig(config: &str, tag: &str) -> Result<Rig> {
    let lab = Lab::create(tag, &LabConfig::default())?;
    let mut scratch = None;
    match config {
        "moat" => {
            let s = Scratch::new(tag)?;
            let p = s.file("life.yaml", MOAT_POLICY)?;
            crate::updates::apply_to(&s, &lab, &p)?;
            scratch = Some(s);
        }
        "nftables conntrack" => {
            nsrun(&lab.ns_b, &["nft", "-f", "-"], Some(NFT))?;
        }
        _ => {}
    }
    let b4: IpAddr = netlab::B4.parse()?;
    let listener = {
        let _g = NetnsGuard::enter(&lab.ns_b)?;
        TcpListener::bind(SocketAddr::new(b4, PORT)).context("binding the server")?
    };
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    if c.read(&mut buf).is_ok() {
                        let _ = c.write_all(b"pong\n");
                    }
                    // The server closes first (its side keeps TIME_WAIT).
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    Ok(Rig {
        lab,
        _scratch: scratch,
        stop,
        server: Some(server),
    })
}

/// `n` whole connections from a to b, one after another; connections per second.
fn lives(rig: &Rig, n: usize) -> Result<f64> {
    let _g = NetnsGuard::enter(&rig.lab.ns_a)?;
    let to = SocketAddr::new(netlab::B4.parse()?, PORT);
    let t = Instant::now();
    let mut buf = [0u8; 16];
    for i in 0..n {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connection {i}"))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"ping\n")?;
        let mut got = 0;
        while got < 5 {
            let k = c.read(&mut buf[got..])?;
            if k == 0 {
                bail!("connection {i}: closed before the reply");
            }
            got += k;
        }
        // Read the server's FIN, then close: the full life.
        let _ = c.read(&mut buf);
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub fn run(conns: usize, rounds: usize, mut say: impl FnMut(&str)) -> Result<Vec<LifeResult>> {
    let tag = format!("tl{}", std::process::id() % 100_000);
    let rigs: Vec<Rig> = CONFIGS
        .iter()
        .enumerate()
        .map(|(k, c)| rig(c, &format!("{tag}{k}")))
        .collect::<Result<_>>()?;
    // A warm-up connection each, then interleaved rounds.
    for r in &rigs {
        lives(r, 10)?;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); rigs.len()];
    for round in 0..rounds {
        for (k, r) in rigs.iter().enumerate() {
            let rate = lives(r, conns)?;
            say(&format!(
                "round {round} {}: {rate:.0} connections/s",
                CONFIGS[k]
            ));
            rates[k].push(rate);
        }
    }
    Ok(CONFIGS
        .iter()
        .zip(rates)
        .map(|(c, mut v)| {
            v.sort_by(f64::total_cmp);
            LifeResult {
                config: c,
                rate: v[v.len() / 2],
                min: v[0],
                max: v[v.len() - 1],
            }
        })
        .collect())
}
