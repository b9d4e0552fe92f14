//! Live traffic: two namespaces joined by veth; a generator in a sends UDP
//! frames with BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX out of
//! a's end, so they arrive at b's end like real traffic, each from a new
//! source address and port); b runs one filter configuration that drops
//! them; we count what b dropped while the generator ran.
//!
//! Every configuration with N rules puts N - 1 rules that do not match the
//! traffic in front of the one that does (the classic worst case for a rule
//! list); tools with sets or hashes get the same N entries.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{TestRun, TestRunAttrs, TestRunOptions, programs::Xdp};
use moat_core::packet::{ETH_P_IP, IPPROTO_UDP, Ips, ethernet, ipv4, udp};
use moat_host::{
    loader::{self, LogOpts},
    netlab::{Lab, LabConfig},
    sys::NetnsGuard,
};

/// The filters compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// No filter: b's stack drops (no socket on the port).
    None,
    /// XDP program returning XDP_DROP: the ceiling.
    XdpDrop,
    /// moat's firewall: N - 1 deny rules for other sources, then `deny udp 9`.
    Moat,
    /// moat with a blocklist: N - 1 other addresses and the traffic's /16,
    /// denied both ways whatever the port (dropped before conntrack).
    MoatBlocklist,
    /// xdp-filter (xdp-tools): N - 1 source addresses, then port 9.
    XdpFilter,
    /// iptables-legacy: N - 1 non-matching rules, then the matching DROP.
    IptablesLegacy,
    /// iptables-nft: the same rules through the nftables backend.
    IptablesNft,
    /// nftables, one rule per address: N - 1 non-matching, then the match.
    NftLinear,
    /// nftables with a set of N - 1 (non-matching) addresses, then the match.
    NftSet,
}

impl Filter {
    pub const ALL: [Filter; 9] = [
        Filter::XdpDrop,
        Filter::None,
        Filter::Moat,
        Filter::MoatBlocklist,
        Filter::XdpFilter,
        Filter::IptablesLegacy,
        Filter::IptablesNft,
        Filter::NftLinear,
        Filter::NftSet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::XdpDrop => "xdp-drop (ceiling)",
            Filter::Moat => "moat",
            Filter::MoatBlocklist => "moat blocklist",
            Filter::XdpFilter => "xdp-filter",
            Filter::IptablesLegacy => "iptables-legacy",
            Filter::IptablesNft => "iptables-nft",
            Filter::NftLinear => "nftables linear",
            Filter::NftSet => "nftables set",
        }
    }

    /// From its command-line name.
    pub fn parse(s: &str) -> Result<Filter> {
        Ok(match s {
            "none" => Filter::None,
            "xdp-drop" => Filter::XdpDrop,
            "moat" => Filter::Moat,
            "moat-blocklist" => Filter::MoatBlocklist,
            "xdp-filter" => Filter::XdpFilter,
            "iptables-legacy" => Filter::IptablesLegacy,
            "iptables-nft" => Filter::IptablesNft,
            "nft-linear" => Filter::NftLinear,
            "nft-set" => Filter::NftSet,
            o => bail!(
                "unknown filter {o:?} (none, moat, moat-blocklist, xdp-filter, iptables-legacy, iptables-nft, nft-linear, nft-set)"
            ),
        })
    }

    /// Does the filter's cost depend on N at all (configurations with N
    /// entries are installed only for those that take entries)?
    pub fn takes_rules(self) -> bool {
        !matches!(self, Filter::None | Filter::XdpDrop)
    }
}

/// Runs a command inside network namespace `ns` (nsenter keeps the host's
/// bpffs mounts visible, unlike `ip netns exec`).
pub fn nsrun(ns: &str, cmd: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).args(cmd);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("running {}", cmd[0]))?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The i-th address that never matches the traffic (the generator's sources
/// are 10.199.0.0/16; these come from 172.16.0.0/12).
fn other(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xAC10_0000u32 + i as u32)
}

type Counter = Box<dyn Fn() -> Result<u64>>;

/// One filter configuration installed on its own lab, ready to be measured
/// again and again (so rounds can interleave configurations).
pub struct Rig {
    pub filter: Filter,
    pub n: usize,
    /// Seconds the rules took to install.
    pub install_secs: f64,
    count: Counter,
    generator: aya::Ebpf,
    keep: Vec<Box<dyn std::any::Any>>,
    pins: Option<PathBuf>,
    lab: Lab,
}

impl Rig {
    /// Creates a lab and installs `filter` with `n` rules on its b end.
    pub fn new(filter: Filter, n: usize, tag: &str) -> Result<Rig> {
        let lab = Lab::create(
            tag,
            &LabConfig {
                addresses: true,
                ipv6: false,
                gro: true,
            },
        )?;
        let log = LogOpts::default();
        let mut generator = loader::open(moat_ebpf::testdata::GEN, &log)?;
        loader::load_xdp(&mut generator, "gen_xdp", &log)?;
        let mut rig = Rig {
            filter,
            n,
            install_secs: 0.0,
            count: Box::new(|| Ok(0)),
            generator,
            keep: Vec::new(),
            pins: None,
            lab,
        };
        let t = Instant::now();
        rig.count = rig
            .install()
            .with_context(|| format!("installing {} with N={n}", filter.name()))?;
        rig.install_secs = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200)); // XDP attach settles
        Ok(rig)
    }

    fn install(&mut self) -> Result<Counter> {
        let (n, ns_b, if_b) = (self.n.max(1), self.lab.ns_b.clone(), self.lab.if_b.clone());
        let log = LogOpts::default();
        match self.filter {
            Filter::None => Ok(Box::new(move || {
                let snmp = nsrun(&ns_b, &["cat", "/proc/net/snmp"], None)?;
                let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
                let (h, v) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
                let idx = h
                    .split_whitespace()
                    .position(|w| w == "NoPorts")
                    .ok_or_else(|| anyhow!("no NoPorts in /proc/net/snmp"))?;
                Ok(v.split_whitespace().nth(idx).unwrap_or("0").parse()?)
            })),
            Filter::XdpDrop => {
                let mut bpf = loader::open(moat_ebpf::testdata::DROP, &log)?;
                loader::load_xdp(&mut bpf, "drop_xdp", &log)?;
                attach(&mut bpf, "drop_xdp", &self.lab)?;
                self.keep.push(Box::new(bpf));
                Ok(Box::new(move || {
                    let s = nsrun(&ns_b, &["ethtool", "-S", &if_b], None)?;
                    Ok(s.lines()
                        .filter(|l| l.contains("xdp_drops"))
                        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                        .sum())
                }))
            }
            Filter::Moat | Filter::MoatBlocklist => {
                let mut yaml = String::from("default: { ingress: allow, egress: allow }\n");
                let list: Vec<String> = (0..n - 1).map(|i| other(i).to_string()).collect();
                if self.filter == Filter::MoatBlocklist {
                    let mut all = list.clone();
                    all.push("10.199.0.0/16".into());
                    yaml.push_str(&format!("sets:\n  block: [{}]\nrules:\n", all.join(", ")));
                    yaml.push_str("  - { name: block-in, direction: ingress, action: deny, remote: [\"@block\"] }\n");
                    yaml.push_str("  - { name: block-out, direction: egress, action: deny, remote: [\"@block\"] }\n");
                } else {
                    yaml.push_str("rules:\n");
                    if n > 1 {
                        yaml.push_str("  - { name: others, direction: ingress, action: deny, proto: udp, ports: [9], remote: [");
                        yaml.push_str(&list.join(", "));
                        yaml.push_str("] }\n");
                    }
                    yaml.push_str("  - { name: discard, direction: ingress, action: deny, proto: udp, ports: [9] }\n");
                }
                let p = moat_core::fw::policy::parse(&yaml, std::path::Path::new("live.yaml"))
                    .map_err(|e| anyhow!("{e}"))?;
                let c = moat_core::fw::compile::compile(&p);
                let pins = PathBuf::from(format!(
                    "/sys/fs/bpf/moat-live-{}-{}",
                    std::process::id(),
                    self.lab.if_b
                ));
                self.pins = Some(pins.clone());
                let inst = moat_host::fw::instance::FwInstance::load(
                    &p,
                    &c,
                    1,
                    &pins,
                    &log,
                    &mut |_, _, _| {},
                )?;
                let mut bpf = inst.bpf;
                attach(&mut bpf, moat_abi::fw::PROG_XDP, &self.lab)?;
                let stats = bpf
                    .take_map(moat_abi::fw::MAP_STATS)
                    .ok_or_else(|| anyhow!("no fw_stats"))?;
                self.keep.push(Box::new(bpf));
                let arr: aya::maps::PerCpuArray<_, moat_abi::count::CountValue> =
                    aya::maps::PerCpuArray::try_from(stats)?;
                Ok(Box::new(move || {
                    let v = moat_host::fw::instance::sum_percpu(&arr)?;
                    Ok(v[moat_abi::fw::STAT_DROP_DEFAULT as usize].packets
                        + v[moat_abi::fw::STAT_DROP_RULE as usize].packets)
                }))
            }
            Filter::XdpFilter => {
                let xf = crate::xdpfilter::XdpFilter::load(&ns_b, &if_b)?;
                xf.deny_dst_port(9, "udp")?;
                let others: Vec<std::net::IpAddr> = (0..n - 1).map(|i| other(i).into()).collect();
                xf.deny_sources(&others)?;
                self.keep.push(Box::new(xf));
                Ok(Box::new(move || crate::xdpfilter::drops_in(&ns_b)))
            }
            Filter::IptablesLegacy | Filter::IptablesNft => {
                let (restore, list) = if self.filter == Filter::IptablesLegacy {
                    ("iptables-legacy-restore", "iptables-legacy")
                } else {
                    ("iptables-nft-restore", "iptables-nft")
                };
                let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
                for i in 0..n - 1 {
                    rules.push_str(&format!(
                        "-A INPUT -s {}/32 -p udp --dport 9 -j DROP\n",
                        other(i)
                    ));
                }
                rules.push_str("-A INPUT -p udp --dport 9 -j DROP\nCOMMIT\n");
                nsrun(&ns_b, &[restore], Some(&rules))?;
                Ok(Box::new(move || {
                    // Only the last rule matches: read its counter.
                    let out = nsrun(&ns_b, &[list, "-L", "INPUT", "-v", "-x", "-n"], None)?;
                    let last = out.lines().last().unwrap_or("");
                    Ok(last.split_whitespace().next().unwrap_or("0").parse()?)
                }))
            }
            Filter::NftLinear | Filter::NftSet => {
                let mut conf = String::from("table ip bench {\n");
                if self.filter == Filter::NftSet {
                    if n > 1 {
                        let elems: Vec<String> = (0..n - 1).map(|i| other(i).to_string()).collect();
                        conf.push_str(&format!(
                            " set others {{ type ipv4_addr; elements = {{ {} }} }}\n",
                            elems.join(", ")
                        ));
                    }
                    conf.push_str(
                        " chain input { type filter hook input priority 0; policy accept;\n",
                    );
                    if n > 1 {
                        conf.push_str("  ip saddr @others udp dport 9 drop\n");
                    }
                } else {
                    conf.push_str(
                        " chain input { type filter hook input priority 0; policy accept;\n",
                    );
                    for i in 0..n - 1 {
                        conf.push_str(&format!("  ip saddr {} udp dport 9 drop\n", other(i)));
                    }
                }
                conf.push_str("  udp dport 9 counter drop\n }\n}\n");
                nsrun(&ns_b, &["nft", "-f", "-"], Some(&conf))?;
                Ok(Box::new(move || {
                    let out = nsrun(
                        &ns_b,
                        &["nft", "list", "chain", "ip", "bench", "input"],
                        None,
                    )?;
                    let line = out
                        .lines()
                        .find(|l| l.contains("counter packets"))
                        .unwrap_or("");
                    let w: Vec<&str> = line.split_whitespace().collect();
                    let i = w
                        .iter()
                        .position(|x| *x == "packets")
                        .ok_or_else(|| anyhow!("no counter in the nftables chain"))?;
                    Ok(w[i + 1].parse()?)
                }))
            }
        }
    }

    /// Sends up to `packets` frames from a to b, for at most `max` (a slow
    /// filter slows the generator down: both run on the same CPU); returns the
    /// packets per second b dropped while they were sent.
    pub fn measure(&mut self, packets: u32, max: Duration, stop: &AtomicBool) -> Result<f64> {
        let before = (self.count)()?;
        let stats0 = prog_stats();
        let prog: &mut Xdp = self.generator.program_mut("gen_xdp").unwrap().try_into()?;
        let (a, b): (Ipv4Addr, Ipv4Addr) = (
            moat_host::netlab::A4.parse()?,
            moat_host::netlab::B4.parse()?,
        );
        let frame = ethernet(
            self.lab.mac_b,
            self.lab.mac_a,
            &[],
            ETH_P_IP,
            &ipv4(a, b, IPPROTO_UDP, &udp(Ips::V4(a, b), 1024, 9, &[0u8; 18])),
        );
        let elapsed = {
            let _g = NetnsGuard::enter(&self.lab.ns_a)?;
            let _pin = PinCpu::last();
            let ifindex = moat_host::traffic::ifindex(&self.lab.if_a)?;
            send_live(prog, &frame, ifindex, packets, max, stop)?
        };
        // Frames still queued on b when the generator returns are few (one
        // ring) and are counted; the rate is over the generator's time.
        std::thread::sleep(Duration::from_millis(20));
        let dropped = (self.count)()?.saturating_sub(before);
        if let (Some(a), Some(b)) = (stats0, prog_stats()) {
            for (name, (ns1, n1)) in &b {
                let (ns0, n0) = a.get(name).copied().unwrap_or((0, 0));
                if n1 > &n0 {
                    eprintln!(
                        "  prog {name}: {:.1} ns/run over {} runs",
                        (ns1 - ns0) as f64 / (n1 - n0) as f64,
                        n1 - n0
                    );
                }
            }
        }
        Ok(dropped as f64 / elapsed.as_secs_f64())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.keep.clear();
        if let Some(p) = &self.pins {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// With MOAT_BENCH_PROG_STATS=1 (and kernel.bpf_stats_enabled=1): run time
/// and run count per XDP program name, to see each filter's own cost under
/// the flood (a diagnostic: the stats themselves cost two clock reads a run).
/// Pins the calling thread to one CPU (the last it may use) until dropped,
/// then gives it back its mask. veth delivers a redirected frame on the
/// sending CPU, so the generator and the receiver's filter then share that
/// one CPU for the whole measurement instead of the thread migrating midway
/// (which moved a ratio by several hundredths between runs).
struct PinCpu(Option<libc::cpu_set_t>);

impl PinCpu {
    fn last() -> PinCpu {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: zeroed cpu_set_t values, passed with their size, for this thread.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut old) != 0 {
                return PinCpu(None);
            }
            let Some(cpu) = (0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&c| libc::CPU_ISSET(c, &old))
            else {
                return PinCpu(None);
            };
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return PinCpu(None);
            }
            PinCpu(Some(old))
        }
    }
}

impl Drop for PinCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: the mask read by sched_getaffinity, with its size.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old);
            }
        }
    }
}

fn prog_stats() -> Option<std::collections::BTreeMap<String, (u64, u64)>> {
    std::env::var_os("MOAT_BENCH_PROG_STATS")?;
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut m = std::collections::BTreeMap::new();
    for p in v.as_array()? {
        let (Some(name), Some(ns), Some(n)) = (
            p["name"].as_str(),
            p["run_time_ns"].as_u64(),
            p["run_cnt"].as_u64(),
        ) else {
            continue;
        };
        let e = m.entry(format!("{name}#{}", p["id"])).or_insert((0, 0));
        e.0 += ns;
        e.1 += n;
    }
    Some(m)
}

fn attach(bpf: &mut aya::Ebpf, name: &str, lab: &Lab) -> Result<()> {
    let _g = NetnsGuard::enter(&lab.ns_b)?;
    let prog: &mut Xdp = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?;
    prog.attach(&lab.if_b, aya::programs::XdpMode::Driver)?;
    Ok(())
}

/// One filter at one N over the rounds.
#[derive(Clone, Debug)]
pub struct LiveResult {
    pub filter: Filter,
    pub n: usize,
    /// Packets per second dropped, one per measurement (the ceiling: one
    /// before each filter and one after the last).
    pub pps: Vec<f64>,
    /// Ratio to the mean of the two ceiling measurements around each one
    /// (the ceiling's own: 1.0 each).
    pub ratio: Vec<f64>,
    pub install_secs: f64,
}

/// Options of the live benchmark.
pub struct LiveOpts {
    pub sizes: Vec<usize>,
    pub packets: u32,
    pub rounds: usize,
    pub filters: Vec<Filter>,
    /// A filter whose install takes longer than this is not tried at larger N.
    pub max_install_secs: f64,
    /// Longest generator run per measurement.
    pub max_secs: f64,
    /// Set by Ctrl-C: stop between chunks (labs and pins are removed).
    pub stop: std::sync::Arc<AtomicBool>,
}

/// Runs every filter at every N: for each N, all configurations are
/// installed side by side (one lab each) and measured in interleaved rounds
/// (A B C … A B C …); the ceiling (XDP drop) is measured before and after
/// each of them.
/// Below this drop rate a filter is not measured at larger N.
pub const MIN_PPS: f64 = 2000.0;

pub fn run_all(o: &LiveOpts, mut say: impl FnMut(&str)) -> Result<(Vec<LiveResult>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut too_slow: Vec<Filter> = Vec::new();
    // Filters that dropped fewer than MIN_PPS at some N: at a larger N each
    // measurement (and each read of their counters) would take minutes.
    let mut crawling: Vec<(Filter, usize, f64)> = Vec::new();
    // The ceiling first: every round's ratios are to its own ceiling.
    let mut filters = o.filters.clone();
    filters.retain(|f| *f != Filter::XdpDrop);
    filters.insert(0, Filter::XdpDrop);
    for (k, &n) in o.sizes.iter().enumerate() {
        let mut rigs = Vec::new();
        for (i, &f) in filters.iter().enumerate() {
            if let Some((_, at, pps)) = crawling.iter().find(|c| c.0 == f) {
                skipped.push(format!(
                    "{} at N={n}: it dropped {pps:.0} packets/s at N={at} (under {MIN_PPS}), slower still at larger N",
                    f.name()
                ));
                continue;
            }
            if too_slow.contains(&f) {
                skipped.push(format!(
                    "{} at N={n}: its install took over {:.0} s at a smaller N",
                    f.name(),
                    o.max_install_secs
                ));
                continue;
            }
            if f == Filter::XdpFilter && n > crate::xdpfilter::MAX_ENTRIES + 1 {
                skipped.push(format!(
                    "{} at N={n}: its address maps hold at most {} entries",
                    f.name(),
                    crate::xdpfilter::MAX_ENTRIES
                ));
                continue;
            }
            if o.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            let tag = format!("lv{}{k}{i}", std::process::id() % 100_000);
            let rig = Rig::new(f, n, &tag)?;
            say(&format!(
                "N={n} {}: installed in {:.1} s",
                f.name(),
                rig.install_secs
            ));
            if rig.install_secs > o.max_install_secs {
                too_slow.push(f);
            }
            rigs.push(rig);
        }
        let mut pps = vec![Vec::new(); rigs.len()];
        let mut ratio = vec![Vec::new(); rigs.len()];
        // Each filter's measurement is bracketed by two of the ceiling (C A C
        // B C …): its ratio is to their mean, so a drift of the machine
        // during the round (this VM's speed moves by 10-20% within seconds)
        // cancels instead of landing on whichever filter ran last.
        let mut measure = |rig: &mut Rig, r: usize| -> Result<f64> {
            let v = rig
                .measure(o.packets, Duration::from_secs_f64(o.max_secs), &o.stop)
                .with_context(|| format!("measuring {} at N={n}", rig.filter.name()))?;
            say(&format!(
                "round {r} N={n} {}: {v:.0} pps",
                rig.filter.name()
            ));
            Ok(v)
        };
        for r in 0..o.rounds {
            let mut before = measure(&mut rigs[0], r)?;
            pps[0].push(before);
            ratio[0].push(1.0);
            for i in 1..rigs.len() {
                let v = measure(&mut rigs[i], r)?;
                let after = measure(&mut rigs[0], r)?;
                pps[0].push(after);
                ratio[0].push(1.0);
                pps[i].push(v);
                ratio[i].push(v / ((before + after) / 2.0).max(1.0));
                before = after;
            }
        }
        for (i, rig) in rigs.iter().enumerate() {
            let mut v = pps[i].clone();
            v.sort_by(f64::total_cmp);
            let med = v.get(v.len() / 2).copied().unwrap_or(0.0);
            if rig.filter.takes_rules() && med < MIN_PPS {
                crawling.push((rig.filter, n, med));
            }
            out.push(LiveResult {
                filter: rig.filter,
                n,
                pps: pps[i].clone(),
                ratio: ratio[i].clone(),
                install_secs: rig.install_secs,
            });
        }
    }
    Ok((out, skipped))
}

/// Sends `frame` out of interface `ifindex` with the XDP program `prog`
/// (which returns XDP_TX) through live-frame BPF_PROG_TEST_RUN, `packets`
/// times or until `max` has passed; returns the time it took. Call it in
/// the interface's namespace.
pub fn send_live(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
    packets: u32,
    max: Duration,
    stop: &AtomicBool,
) -> Result<Duration> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let t = Instant::now();
    // Chunks of about a quarter second each (every test run call sets up
    // its frame pool, so chunks must not be small), sized from the rate the
    // previous chunk achieved.
    let mut sent = 0u32;
    let mut chunk = 65_536u32;
    while sent < packets && t.elapsed() < max {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let n = (packets - sent).min(chunk);
        let c = Instant::now();
        loader::test_run_retrying(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
        })
        .context("live-frames BPF_PROG_TEST_RUN")?;
        sent += n;
        let rate = f64::from(n) / c.elapsed().as_secs_f64().max(1e-6);
        chunk = ((rate * 0.25) as u32).clamp(4096, 4_000_000);
    }
    Ok(t.elapsed())
}
