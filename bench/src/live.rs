//! EXPERIMENTAL (not yet the full comparison: no iptables-nft,
//! nftables-linear or xdp-filter, no softirq time per packet, no report).
//!
//! Live traffic: two namespaces joined by veth; a generator in a sends UDP
//! frames with BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX out of
//! a's end, so they arrive at b's end like real traffic); b runs one filter
//! configuration that drops them; we count what b dropped per second.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{TestRun, TestRunAttrs, TestRunOptions, programs::Xdp};
use moat::{
    loader::{self, LogOpts},
    netlab::{Lab, LabConfig},
    sys::NetnsGuard,
};
use moat_core::packet::{ETH_P_IP, IPPROTO_UDP, Ips, ethernet, ipv4, udp};

/// The filters compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// No filter: b's stack drops (no socket on the port).
    None,
    /// XDP program returning XDP_DROP: the ceiling.
    XdpDrop,
    /// moat's firewall (default deny, N allow rules for other addresses).
    Moat,
    /// iptables-legacy: N non-matching rules, then the matching DROP.
    IptablesLegacy,
    /// nftables with a set of N (non-matching) addresses, then the matching drop.
    NftSet,
}

impl Filter {
    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::XdpDrop => "xdp-drop (ceiling)",
            Filter::Moat => "moat",
            Filter::IptablesLegacy => "iptables-legacy",
            Filter::NftSet => "nftables set",
        }
    }
}

fn run(ns: &str, cmd: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).args(cmd);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("running {cmd:?}"))?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn other(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xAC10_0000u32 + i as u32) // 172.16.0.0/12: never the generator's sources
}

/// Installs `filter` with `n` rules on b; returns a closure reading b's drop count.
fn install(
    lab: &Lab,
    filter: Filter,
    n: usize,
    keep: &mut Vec<Box<dyn std::any::Any>>,
) -> Result<Box<dyn Fn() -> Result<u64>>> {
    let ns_b = lab.ns_b.clone();
    let if_b = lab.if_b.clone();
    match filter {
        Filter::None => Ok(Box::new(move || {
            let snmp = run(&ns_b, &["cat", "/proc/net/snmp"], None)?;
            let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
            let (h, v) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            let idx = h
                .split_whitespace()
                .position(|w| w == "NoPorts")
                .ok_or_else(|| anyhow!("no NoPorts"))?;
            Ok(v.split_whitespace().nth(idx).unwrap_or("0").parse()?)
        })),
        Filter::XdpDrop | Filter::Moat => {
            let log = LogOpts::default();
            let (mut bpf, name) = if filter == Filter::XdpDrop {
                (loader::open(moat_ebpf::testdata::DROP, &log)?, "drop_xdp")
            } else {
                // moat: default deny with n allow rules for other addresses.
                let yaml = format!(
                    "default: {{ ingress: deny, egress: allow }}\nrules:\n{}",
                    (0..n).map(|i| format!("  - {{ name: r{i}, direction: ingress, action: allow, remote: [{}], proto: udp, ports: [{}] }}\n", other(i), 1000 + i % 60000)).collect::<String>()
                );
                let p = moat_core::fw::policy::parse(&yaml, std::path::Path::new("live.yaml"))
                    .map_err(|e| anyhow!("{e}"))?;
                let c = moat_core::fw::compile::compile(&p);
                let pins = std::path::PathBuf::from(format!(
                    "/sys/fs/bpf/moat-live-{}",
                    std::process::id()
                ));
                let inst = moat::fw::instance::FwInstance::load(
                    &p,
                    &c,
                    1,
                    &pins,
                    &log,
                    &mut |_, _, _| {},
                )?;
                (inst.bpf, moat_abi::fw::PROG_XDP)
            };
            if filter == Filter::XdpDrop {
                loader::load_xdp(&mut bpf, name, &log)?;
            }
            {
                let _g = NetnsGuard::enter(&lab.ns_b)?;
                let prog: &mut Xdp = bpf.program_mut(name).unwrap().try_into()?;
                prog.attach(&if_b, aya::programs::XdpMode::Driver)?;
            }
            if filter == Filter::XdpDrop {
                keep.push(Box::new(bpf));
                Ok(Box::new(move || {
                    let s = run(&ns_b, &["ethtool", "-S", &if_b], None)?;
                    Ok(s.lines()
                        .filter(|l| l.contains("xdp_drops"))
                        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                        .sum())
                }))
            } else {
                let stats = bpf
                    .take_map(moat_abi::fw::MAP_STATS)
                    .ok_or_else(|| anyhow!("no fw_stats"))?;
                keep.push(Box::new(bpf));
                let arr: aya::maps::PerCpuArray<_, moat_abi::count::CountValue> =
                    aya::maps::PerCpuArray::try_from(stats)?;
                let arr = std::sync::Mutex::new(arr);
                Ok(Box::new(move || {
                    let arr = arr.lock().unwrap();
                    let v = moat::fw::instance::sum_percpu(&arr)?;
                    Ok(v[moat_abi::fw::STAT_DROP_DEFAULT as usize].packets
                        + v[moat_abi::fw::STAT_DROP_RULE as usize].packets)
                }))
            }
        }
        Filter::IptablesLegacy => {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
            for i in 0..n.saturating_sub(1) {
                rules.push_str(&format!(
                    "-A INPUT -s {}/32 -p udp --dport 9 -j DROP\n",
                    other(i)
                ));
            }
            rules.push_str("-A INPUT -p udp --dport 9 -j DROP\nCOMMIT\n");
            run(&lab.ns_b, &["iptables-legacy-restore"], Some(&rules))?;
            Ok(Box::new(move || {
                let out = run(
                    &ns_b,
                    &["iptables-legacy", "-L", "INPUT", "-v", "-x", "-n"],
                    None,
                )?;
                let last = out.lines().last().unwrap_or("");
                Ok(last.split_whitespace().next().unwrap_or("0").parse()?)
            }))
        }
        Filter::NftSet => {
            let elems: Vec<String> = (0..n.max(1)).map(|i| other(i).to_string()).collect();
            let conf = format!(
                "table ip bench {{\n set blk {{ type ipv4_addr; elements = {{ {} }} }}\n chain input {{ type filter hook input priority 0; policy accept;\n  ip saddr @blk drop\n  udp dport 9 counter drop\n }}\n}}\n",
                elems.join(", ")
            );
            run(&lab.ns_b, &["nft", "-f", "-"], Some(&conf))?;
            Ok(Box::new(move || {
                let out = run(
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
                    .ok_or_else(|| anyhow!("no counter"))?;
                Ok(w[i + 1].parse()?)
            }))
        }
    }
}

/// Sends `packets` frames from a to b; returns the wall time.
fn generate(lab: &Lab, packets: u32) -> Result<Duration> {
    let log = LogOpts::default();
    let mut bpf = loader::open(moat_ebpf::testdata::GEN, &log)?;
    loader::load_xdp(&mut bpf, "gen_xdp", &log)?;
    let prog: &mut Xdp = bpf.program_mut("gen_xdp").unwrap().try_into()?;
    let (a, b): (Ipv4Addr, Ipv4Addr) = ("10.199.0.1".parse()?, "10.199.0.2".parse()?);
    let frame = ethernet(
        lab.mac_b,
        lab.mac_a,
        &[],
        ETH_P_IP,
        &ipv4(a, b, IPPROTO_UDP, &udp(Ips::V4(a, b), 1024, 9, &[0u8; 18])),
    );
    let _g = NetnsGuard::enter(&lab.ns_a)?;
    let ifindex = moat::traffic::ifindex(&lab.if_a)?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let t = Instant::now();
    prog.test_run(TestRunOptions {
        data_in: Some(&frame),
        ctx_in: Some(&ctx),
        repeat: packets,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..Default::default()
    })
    .context("live-frames BPF_PROG_TEST_RUN")?;
    Ok(t.elapsed())
}

/// One measurement: packets per second that b dropped while a sent.
pub fn measure(filter: Filter, n: usize, packets: u32, tag: &str) -> Result<f64> {
    let lab = Lab::create(
        tag,
        &LabConfig {
            addresses: true,
            ipv6: false,
            gro: true,
        },
    )?;
    let mut keep = Vec::new();
    let count = install(&lab, filter, n, &mut keep)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = count()?;
    let elapsed = generate(&lab, packets)?;
    std::thread::sleep(Duration::from_millis(300));
    let dropped = count()? - before;
    drop(keep);
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/moat-live-{}", std::process::id()));
    Ok(dropped as f64 / elapsed.as_secs_f64())
}
