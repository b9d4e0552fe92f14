//! Policy updates: how long `moat fw apply` takes for large policies, and
//! whether allowed traffic loses anything while policies are swapped.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use moat_host::{
    count::Mode,
    fw::{
        apply::{ApplyOpts, apply_at},
        state::Paths,
    },
    loader::LogOpts,
    netlab::{self, Lab, LabConfig},
    traffic::{EchoServers, Lockstep},
};

/// Apply times for one policy size.
#[derive(Clone, Debug)]
pub struct ApplyTime {
    /// Addresses in the policy's blocklist set.
    pub entries: usize,
    /// First apply (nothing running), seconds.
    pub first: f64,
    /// Apply over a running firewall (the atomic swap), seconds.
    pub again: f64,
}

/// Traffic while policies are swapped.
#[derive(Clone, Debug)]
pub struct UnderTraffic {
    pub applies: usize,
    /// Messages exchanged (each checked) and lost.
    pub exchanged: u64,
    pub lost: u64,
    pub secs: f64,
}

/// A scratch directory for pins, state and policy files, removed on drop.
pub(crate) struct Scratch {
    pins: PathBuf,
    state: PathBuf,
}

impl Scratch {
    pub(crate) fn new(tag: &str) -> Result<Scratch> {
        let s = Scratch {
            pins: PathBuf::from(format!("/sys/fs/bpf/moat-bench-{tag}")),
            state: std::env::temp_dir().join(format!("moat-bench-{tag}")),
        };
        moat_host::sys::private_dir(&s.state)?;
        Ok(s)
    }
    fn paths(&self) -> Paths {
        Paths::under(&self.pins, &self.state)
    }
    pub(crate) fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.state.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

const BASE: &str = "default: { ingress: deny, egress: allow }
rules:
  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [7000] }
  - { name: dns, direction: ingress, action: allow, proto: udp, ports: [7001] }
  - { name: blocklist, direction: ingress, action: deny, remote: \"@blocklist\" }
";

fn policy_with_blocklist(s: &Scratch, name: &str, entries: usize, offset: u32) -> Result<PathBuf> {
    let mut list = String::with_capacity(entries * 16);
    for i in 0..entries as u32 {
        // 100.64.0.0/10 and up: never the lab's addresses.
        let a = std::net::Ipv4Addr::from(0x6440_0000u32 + offset + i);
        list.push_str(&a.to_string());
        list.push('\n');
    }
    s.file(&format!("{name}.txt"), &list)?;
    s.file(
        &format!("{name}.yaml"),
        &format!("{BASE}sets:\n  blocklist: {{ file: {name}.txt }}\n"),
    )
}

/// `moat fw apply` of `policy` on lab's b end, pins and state in `s`.
pub(crate) fn apply_to(s: &Scratch, lab: &Lab, policy: &Path) -> Result<f64> {
    let t = Instant::now();
    apply_at(
        &s.paths(),
        &ApplyOpts {
            policy: policy.to_path_buf(),
            interfaces: vec![lab.if_b.clone()],
            netns: Some(lab.ns_b.clone()),
            mode: Mode::Native,
            quiet: true,
            memory_budget: None,
        },
        &LogOpts::default(),
        &mut |_, _, _| {},
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// `moat fw apply` wall time for policies whose blocklist has each size.
pub fn apply_times(
    sizes: &[usize],
    tag: &str,
    mut say: impl FnMut(&str),
) -> Result<Vec<ApplyTime>> {
    let mut out = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let lab = Lab::create(&format!("{tag}{k}"), &LabConfig::default())?;
        let s = Scratch::new(&format!("{tag}{k}"))?;
        let p1 = policy_with_blocklist(&s, "one", n, 0)?;
        let p2 = policy_with_blocklist(&s, "two", n, 1)?;
        let first = apply_to(&s, &lab, &p1)?;
        let again = apply_to(&s, &lab, &p2)?;
        say(&format!(
            "apply N={n}: first {first:.2} s, again {again:.2} s"
        ));
        out.push(ApplyTime {
            entries: n,
            first,
            again,
        });
    }
    Ok(out)
}

/// `applies` back-to-back applies (alternating two policies) while checked
/// TCP and UDP exchanges run over IPv4 and IPv6 through the firewall.
pub fn under_traffic(applies: usize, entries: usize, tag: &str) -> Result<UnderTraffic> {
    let lab = Lab::create(tag, &LabConfig::default())?;
    let s = Scratch::new(tag)?;
    let dsts: Vec<IpAddr> = vec![netlab::B4.parse()?, netlab::B6.parse()?];
    let _servers = EchoServers::start(&lab.ns_b, &dsts, 7000)?;
    let p1 = policy_with_blocklist(&s, "one", entries, 0)?;
    let p2 = policy_with_blocklist(&s, "two", entries, 1)?;
    apply_to(&s, &lab, &p1)?;
    let t = Instant::now();
    let traffic = Lockstep::start(&lab.ns_a, &dsts, 7000)?;
    for i in 0..applies {
        apply_to(&s, &lab, if i % 2 == 0 { &p2 } else { &p1 })?;
    }
    let (exchanged, lost) = traffic.finish()?;
    Ok(UnderTraffic {
        applies,
        exchanged,
        lost,
        secs: t.elapsed().as_secs_f64(),
    })
}
