//! The load balancer's benchmarks, side by side with its peers that run on
//! this kernel (IPVS does not: no CONFIG_IP_VS): nftables DNAT with `numgen`
//! and `jhash` maps, iptables DNAT with `statistic`, plain kernel forwarding.
//!
//! * forwarded packets per second: a live-frames generator in the client
//!   namespace floods UDP to the VIP (a new flow per frame, or one flow),
//!   the balancer's namespace forwards, and an XDP drop program on each
//!   backend's interface counts what arrived;
//! * program cost per packet (BPF_PROG_TEST_RUN, the full forwarding path:
//!   FIB lookup, redirect) for a new connection, a tracked one and a reply, at
//!   1, 10, 100 and 1000 backends, loaded side by side, interleaved rounds;
//! * HTTP requests per second (a real client, a fresh connection each)
//!   through the balancer and nftables DNAT to real servers;
//! * Maglev disruption (removing one backend) against table size.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use aya::{Ebpf, TestRun, TestRunOptions, maps::Array, programs::Xdp};
use moat_core::{
    lb::{self as core, BackendId, State, encode},
    packet::{self as pkt, Ips},
};
use moat_host::{
    fw::state::Paths,
    lb::{apply as lbapply, instance::LbInstance},
    loader::{self, LogOpts},
    netlab::{LbLab, ip},
    sys::NetnsGuard,
    traffic::{NameServer, ifindex},
};

use crate::live::nsrun;

pub const LIVE_CONFIGS: [&str; 6] = [
    "kernel forwarding (no balancer)",
    "moat nat",
    "moat dsr",
    "nftables dnat numgen",
    "nftables dnat jhash",
    "iptables dnat statistic",
];

fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = ip(&["-n", ns, "link", "show", "dev", dev])?;
    let m = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC for {dev} in {ns}"))?;
    let v: Vec<u8> = m
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<std::result::Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow!("bad MAC {m}"))
}

fn yaml(mode: &str, port_remap: bool) -> String {
    let mut b = String::new();
    for n in 1..=3 {
        if port_remap {
            b.push_str(&format!(
                "      - {{ address: 10.197.{n}.2, port: 8080 }}\n"
            ));
        } else {
            b.push_str(&format!("      - 10.197.{n}.2\n"));
        }
    }
    let (port, proto) = if port_remap { (80, "tcp") } else { (9, "udp") };
    format!(
        "services:\n  - name: bench\n    vip: 10.200.0.10\n    port: {port}\n    proto: {proto}\n    mode: {mode}\n    backends:\n{b}"
    )
}

/// A balancer lab with one configuration installed.
struct Rig {
    config: &'static str,
    lab: LbLab,
    pins: Option<(PathBuf, PathBuf)>,
    keep: Vec<Ebpf>,
    generator: Option<Ebpf>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some((pin_root, state_root)) = &self.pins {
            let _ = lbapply::detach_at(&Paths::family(pin_root, state_root, "lb"));
            let _ = std::fs::remove_dir_all(pin_root);
            let _ = std::fs::remove_dir_all(state_root);
        }
        self.keep.clear();
    }
}

fn install(config: &'static str, tag: &str, port_remap: bool) -> Result<Rig> {
    let lab = LbLab::create(tag, 3)?;
    let l = lab.ns_l.clone();
    // Backends' MACs known in advance: a drop program on a backend would
    // also drop its ARP replies.
    for n in 1..=3 {
        let m = mac_of(&lab.ns_s[n - 1], "eth0")?;
        let mac = m
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ip(&[
            "-n",
            &l,
            "neigh",
            "replace",
            &format!("10.197.{n}.2"),
            "lladdr",
            &mac,
            "dev",
            &format!("be{n}"),
            "nud",
            "permanent",
        ])?;
    }
    let mut rig = Rig {
        config,
        lab,
        pins: None,
        keep: Vec::new(),
        generator: None,
    };
    let map3 = "{ 0 : 10.197.1.2, 1 : 10.197.2.2, 2 : 10.197.3.2 }";
    let (dport, proto, to_port) = if port_remap {
        (80, "tcp", ":8080")
    } else {
        (9, "udp", "")
    };
    match config {
        "kernel forwarding (no balancer)" => {}
        "moat nat" | "moat dsr" => {
            let pin_root = PathBuf::from(format!("/sys/fs/bpf/moat-lbbench-{tag}"));
            let state_root = PathBuf::from(format!("/run/moat-lbbench-{tag}"));
            std::fs::create_dir_all(&state_root)?;
            let file = state_root.join("lb.yaml");
            let mode = if config == "moat nat" { "nat" } else { "dsr" };
            std::fs::write(&file, yaml(mode, port_remap))?;
            rig.pins = Some((pin_root.clone(), state_root.clone()));
            let o = lbapply::ApplyOpts {
                config: file,
                interfaces: rig.lab.lb_ifaces(),
                netns: Some(l.clone()),
                skb: false,
            };
            lbapply::apply_at(
                &Paths::family(&pin_root, &state_root, "lb"),
                &o,
                &LogOpts::default(),
            )?;
        }
        "nftables dnat numgen" | "nftables dnat jhash" => {
            let pick = if config.ends_with("numgen") {
                format!("numgen random mod 3 map {map3}")
            } else {
                format!("jhash ip saddr . {proto} sport mod 3 map {map3}")
            };
            let conf = format!(
                "table ip lbbench {{\n chain pre {{ type nat hook prerouting priority -100;\n  ip daddr 10.200.0.10 {proto} dport {dport} dnat to {pick}{to_port}\n }}\n}}\n"
            );
            nsrun(&l, &["nft", "-f", "-"], Some(&conf))?;
        }
        "iptables dnat statistic" => {
            let mut rules = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
            for (n, p) in [(1, "0.33333"), (2, "0.5"), (3, "1")] {
                let stat = if p == "1" {
                    String::new()
                } else {
                    format!("-m statistic --mode random --probability {p} ")
                };
                rules.push_str(&format!(
                    "-A PREROUTING -d 10.200.0.10/32 -p {proto} --dport {dport} {stat}-j DNAT --to-destination 10.197.{n}.2{to_port}\n"
                ));
            }
            rules.push_str("COMMIT\n");
            nsrun(&l, &["iptables-restore"], Some(&rules))?;
        }
        other => bail!("unknown configuration {other}"),
    }
    Ok(rig)
}

impl Rig {
    fn with_drops(mut self) -> Result<Rig> {
        let log = LogOpts::default();
        for ns in self.lab.ns_s.clone() {
            let mut bpf = loader::open(moat_ebpf::testdata::DROP, &log)?;
            loader::load_xdp(&mut bpf, "drop_xdp", &log)?;
            {
                let _g = NetnsGuard::enter(&ns)?;
                let p: &mut Xdp = bpf.program_mut("drop_xdp").unwrap().try_into()?;
                p.attach("eth0", aya::programs::XdpMode::Driver)?;
            }
            self.keep.push(bpf);
        }
        let mut g = loader::open(moat_ebpf::testdata::GEN, &log)?;
        loader::load_xdp(&mut g, "genlb_xdp", &log)?;
        loader::load_xdp(&mut g, "genlb1_xdp", &log)?;
        self.generator = Some(g);
        Ok(self)
    }

    fn arrived(&self) -> Result<u64> {
        let mut total = 0;
        for ns in &self.lab.ns_s {
            let s = nsrun(ns, &["ethtool", "-S", "eth0"], None)?;
            total += s
                .lines()
                .filter(|l| l.contains("xdp_drops"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// Floods `packets` UDP frames (at most `max`) to the VIP (or, for kernel
    /// forwarding, to backend 1); returns what reached the backends per second.
    fn measure(
        &mut self,
        new_flows: bool,
        packets: u32,
        max: Duration,
        stop: &AtomicBool,
    ) -> Result<f64> {
        let c = self.lab.ns_c.clone();
        let cli_mac = mac_of(&self.lab.ns_l, "cli")?;
        let own = mac_of(&c, "eth0")?;
        let src: Ipv4Addr = "10.198.0.1".parse()?;
        let dst: Ipv4Addr = if self.config.starts_with("kernel") {
            "10.197.1.2".parse()?
        } else {
            "10.200.0.10".parse()?
        };
        let frame = pkt::ethernet(
            cli_mac,
            own,
            &[],
            pkt::ETH_P_IP,
            &pkt::ipv4(
                src,
                dst,
                pkt::IPPROTO_UDP,
                &pkt::udp(Ips::V4(src, dst), 1024, 9, &[0u8; 18]),
            ),
        );
        let name = if new_flows { "genlb_xdp" } else { "genlb1_xdp" };
        let before = self.arrived()?;
        let g = self
            .generator
            .as_mut()
            .ok_or_else(|| anyhow!("no generator"))?;
        {
            let mut t: Array<_, [u8; 48]> = Array::try_from(
                g.map_mut("gen_tmpl")
                    .ok_or_else(|| anyhow!("no gen_tmpl"))?,
            )?;
            let mut v = [0u8; 48];
            v[..42].copy_from_slice(&frame[..42]);
            t.set(0, v, 0)?;
        }
        let prog: &mut Xdp = g.program_mut(name).unwrap().try_into()?;
        let elapsed = {
            let _g = NetnsGuard::enter(&c)?;
            let idx = ifindex("eth0")?;
            crate::live::send_live(prog, &frame, idx, packets, max, stop)?
        };
        std::thread::sleep(Duration::from_millis(30));
        let got = self.arrived()?.saturating_sub(before);
        Ok(got as f64 / elapsed.as_secs_f64())
    }
}

/// Packets per second per configuration, new flows and one flow, per round.
#[derive(Clone, Debug)]
pub struct LiveLb {
    pub config: &'static str,
    pub new_flows: Vec<f64>,
    pub one_flow: Vec<f64>,
}

pub fn live(
    packets: u32,
    rounds: usize,
    stop: &AtomicBool,
    mut say: impl FnMut(&str),
) -> Result<Vec<LiveLb>> {
    let mut rigs = Vec::new();
    for (i, c) in LIVE_CONFIGS.iter().enumerate() {
        let tag = format!("lbl{}{i}", std::process::id() % 100_000);
        match install(c, &tag, false).and_then(Rig::with_drops) {
            Ok(r) => rigs.push(r),
            Err(e) => say(&format!("{c}: not run: {e:#}")),
        }
    }
    let mut out: Vec<LiveLb> = rigs
        .iter()
        .map(|r| LiveLb {
            config: r.config,
            new_flows: vec![],
            one_flow: vec![],
        })
        .collect();
    for round in 0..rounds {
        for (i, r) in rigs.iter_mut().enumerate() {
            for new in [true, false] {
                let v = r.measure(new, packets, Duration::from_secs(2), stop)?;
                say(&format!(
                    "round {round} {}: {} {v:.0} pps forwarded",
                    r.config,
                    if new { "new flows" } else { "one flow" }
                ));
                if new {
                    out[i].new_flows.push(v);
                } else {
                    out[i].one_flow.push(v);
                }
            }
        }
    }
    Ok(out)
}

/// HTTP requests per second (a fresh connection each) per configuration.
pub fn requests(
    secs: f64,
    rounds: usize,
    mut say: impl FnMut(&str),
) -> Result<Vec<(&'static str, Vec<f64>)>> {
    let configs = [
        "kernel forwarding (no balancer)",
        "moat nat",
        "nftables dnat numgen",
    ];
    let mut rigs = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let tag = format!("lbr{}{i}", std::process::id() % 100_000);
        let rig = install(c, &tag, true)?;
        let servers: Vec<NameServer> = rig
            .lab
            .ns_s
            .iter()
            .enumerate()
            .map(|(k, ns)| NameServer::start(ns, &format!("be{}", k + 1), 8080))
            .collect::<Result<_>>()?;
        rigs.push((rig, servers));
    }
    let mut out: Vec<(&'static str, Vec<f64>)> = configs.iter().map(|c| (*c, vec![])).collect();
    for round in 0..rounds {
        for (i, (rig, _)) in rigs.iter().enumerate() {
            let to: SocketAddr = if rig.config.starts_with("kernel") {
                "10.197.1.2:8080".parse()?
            } else {
                "10.200.0.10:80".parse()?
            };
            let ns = rig.lab.ns_c.clone();
            let (n, failed) = std::thread::spawn(move || -> Result<(u64, u64)> {
                let _g = NetnsGuard::enter(&ns)?;
                // A real HTTP client, a fresh connection per request.
                let agent = ureq::AgentBuilder::new()
                    .max_idle_connections(0)
                    .timeout(Duration::from_secs(2))
                    .build();
                let url = format!("http://{to}/");
                let t = Instant::now();
                let (mut n, mut failed) = (0u64, 0u64);
                while t.elapsed().as_secs_f64() < secs {
                    let ok = agent
                        .get(&url)
                        .call()
                        .ok()
                        .filter(|r| r.status() == 200)
                        .and_then(|r| r.into_string().ok())
                        .is_some_and(|b| b.starts_with("be"));
                    if ok {
                        n += 1;
                    } else {
                        failed += 1;
                    }
                }
                Ok((n, failed))
            })
            .join()
            .map_err(|_| anyhow!("client thread panicked"))??;
            let rps = n as f64 / secs;
            say(&format!(
                "round {round} {}: {rps:.0} requests/s ({failed} failed)",
                rig.config
            ));
            if failed > 0 {
                bail!("{}: {failed} requests failed", rig.config);
            }
            out[i].1.push(rps);
        }
    }
    Ok(out)
}

/// One program-cost sample: scenario, backends, median ns, (min, max).
#[derive(Clone, Debug)]
pub struct CostLb {
    pub scenario: &'static str,
    pub n: usize,
    pub ns: f64,
    pub spread: (f64, f64),
}

pub const COST_SIZES: [usize; 4] = [1, 10, 100, 1000];
const COST_TABLE: u32 = 131_071;

fn many(n: usize) -> String {
    let mut b = String::new();
    for i in 0..n {
        b.push_str(&format!(
            "      - {{ address: 10.196.{}.{}, port: 8080 }}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    format!(
        "maglev: {{ table: {COST_TABLE} }}\nservices:\n  - name: bench\n    vip: 10.200.0.10\n    port: 80\n    proto: tcp\n    backends:\n{b}"
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn prog_cost(rounds: usize, mut say: impl FnMut(&str)) -> Result<Vec<CostLb>> {
    let tag = format!("lbc{}", std::process::id() % 100_000);
    let lab = LbLab::create(&tag, 1)?;
    let l = lab.ns_l.clone();
    // Every backend is reached through one next hop whose MAC is known.
    ip(&[
        "-n",
        &l,
        "neigh",
        "replace",
        "10.197.1.2",
        "lladdr",
        "02:be:00:00:01:02",
        "dev",
        "be1",
        "nud",
        "permanent",
    ])?;
    ip(&[
        "-n",
        &l,
        "neigh",
        "replace",
        "10.198.0.1",
        "lladdr",
        "02:c1:00:00:00:01",
        "dev",
        "cli",
        "nud",
        "permanent",
    ])?;
    ip(&[
        "-n",
        &l,
        "route",
        "add",
        "10.196.0.0/16",
        "via",
        "10.197.1.2",
    ])?;
    let root = PathBuf::from(format!("/sys/fs/bpf/moat-lbcost-{tag}"));
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(root.clone());
    let out = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<CostLb>> {
            let _g = NetnsGuard::enter(&l)?;
            moat_host::sys::ensure_bpffs()?;
            let cli = ifindex("cli")?;
            let be1 = ifindex("be1")?;
            let mut insts = Vec::new();
            for &n in &COST_SIZES {
                let cfg = core::parse(&many(n), std::path::Path::new("bench.yaml"))
                    .map_err(|e| anyhow!("{e}"))?;
                let none = |_: &str, _: BackendId| None::<State>;
                let enc =
                    encode::encode(&cfg, &cfg.services, &encode::Running::default(), 1, &none)
                        .map_err(|e| anyhow!(e))?;
                let mut inst = LbInstance::load(
                    &enc,
                    1 << 20,
                    &root.join(format!("n{n}")),
                    &LogOpts::default(),
                )?;
                inst.write_shared(&enc)?;
                inst.allow_iface(cli)?;
                inst.allow_iface(be1)?;
                insts.push((n, inst));
            }
            let client: Ipv4Addr = "10.198.0.1".parse()?;
            let vip: Ipv4Addr = "10.200.0.10".parse()?;
            let ctx = |idx: u32, len: usize| {
                let mut c = [0u8; 24];
                c[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
                c[12..16].copy_from_slice(&idx.to_ne_bytes());
                c
            };
            let run =
                |inst: &mut LbInstance, f: &[u8], idx: u32, repeat: u32| -> Result<(f64, u32)> {
                    let c = ctx(idx, f.len());
                    let prog = inst.xdp()?;
                    let r = loader::test_run_retrying(|| {
                        prog.test_run(TestRunOptions {
                            data_in: Some(f),
                            ctx_in: Some(&c),
                            repeat,
                            ..Default::default()
                        })
                    })?;
                    Ok((r.duration.as_nanos() as f64, r.return_value))
                };
            let mut samples: Vec<(&'static str, usize, Vec<f64>)> = Vec::new();
            let mut port = 1024u16;
            let mut floor = loader::open(moat_ebpf::testdata::DROP, &LogOpts::default())?;
            loader::load_xdp(&mut floor, "drop_xdp", &LogOpts::default())?;
            for round in 0..rounds {
                {
                    let p: &mut Xdp = floor.program_mut("drop_xdp").unwrap().try_into()?;
                    let f = pkt::tcp4_frame(client, vip, 1, 80, pkt::TCP_SYN, b"");
                    let c = ctx(cli, f.len());
                    let mut t = Vec::new();
                    for _ in 0..500 {
                        let r = p.test_run(TestRunOptions {
                            data_in: Some(&f),
                            ctx_in: Some(&c),
                            ..Default::default()
                        })?;
                        t.push(r.duration.as_nanos() as f64);
                    }
                    for &n in &COST_SIZES {
                        match samples
                            .iter_mut()
                            .find(|(s, m, _)| *s == "xdp-drop (floor)" && *m == n)
                        {
                            Some(x) => x.2.push(median(&t)),
                            None => samples.push(("xdp-drop (floor)", n, vec![median(&t)])),
                        }
                    }
                }
                // New connections: distinct SYNs, one run each, the sizes
                // interleaved packet by packet (each SYN goes to every
                // size in turn, the first size rotating per round), so a
                // slow moment of the machine hits all sizes alike.
                insts.rotate_left(if round == 0 { 0 } else { 1 });
                let mut news: Vec<Vec<f64>> = vec![Vec::new(); insts.len()];
                for _ in 0..500 {
                    port = port.wrapping_add(1).max(1024);
                    let f = pkt::tcp4_frame(client, vip, port, 80, pkt::TCP_SYN, b"");
                    for (k, (_, inst)) in insts.iter_mut().enumerate() {
                        let (t, ret) = run(inst, &f, cli, 1)?;
                        if ret != 4 {
                            let st = inst.stats()?;
                            let names: Vec<String> = moat_abi::lb::STAT_NAMES
                                .iter()
                                .zip(&st)
                                .filter(|(_, c)| c.packets > 0)
                                .map(|(n, c)| format!("{n} {}", c.packets))
                                .collect();
                            bail!(
                                "a new connection was not redirected (return {ret}; counters: {})",
                                names.join(", ")
                            );
                        }
                        news[k].push(t);
                    }
                }
                for (k, (n, inst)) in insts.iter_mut().enumerate() {
                    let new = median(&news[k]);
                    // Tracked: one connection, run after run (single runs:
                    // with repeat the kernel runs the program again on the
                    // frame it already rewrote, which is no longer for the VIP).
                    port = port.wrapping_add(1).max(1024);
                    let f = pkt::tcp4_frame(client, vip, port, 80, pkt::TCP_ACK, b"");
                    run(inst, &f, cli, 1)?;
                    let mut t = Vec::new();
                    for _ in 0..500 {
                        let (x, ret) = run(inst, &f, cli, 1)?;
                        if ret != 4 {
                            bail!("a tracked packet was not redirected (return {ret})");
                        }
                        t.push(x);
                    }
                    let tracked = median(&t);
                    // Its reply, from whichever backend it got.
                    let conns = inst.conns()?;
                    let v = conns
                        .iter()
                        .find(|(k, _)| u16::from_be(k.cport) == port)
                        .map(|(_, v)| *v)
                        .ok_or_else(|| anyhow!("connection not tracked"))?;
                    let b = encode::ip_of(&v.backend, 4);
                    let IpAddr::V4(b) = b else {
                        bail!("v4 backend expected")
                    };
                    let r = pkt::tcp4_frame(b, client, 8080, port, pkt::TCP_ACK, b"");
                    let mut t = Vec::new();
                    for _ in 0..500 {
                        let (x, ret) = run(inst, &r, be1, 1)?;
                        if ret != 4 {
                            bail!("a reply was not redirected (return {ret})");
                        }
                        t.push(x);
                    }
                    let reply = median(&t);
                    for (sc, ns) in [
                        ("new connection", new),
                        ("tracked connection", tracked),
                        ("reply", reply),
                    ] {
                        match samples.iter_mut().find(|(s, m, _)| *s == sc && m == n) {
                            Some(x) => x.2.push(ns),
                            None => samples.push((sc, *n, vec![ns])),
                        }
                    }
                }
            }
            Ok(samples
                .into_iter()
                .map(|(scenario, n, v)| CostLb {
                    scenario,
                    n,
                    ns: median(&v),
                    spread: (
                        v.iter().copied().fold(f64::MAX, f64::min),
                        v.iter().copied().fold(0.0, f64::max),
                    ),
                })
                .collect())
        })
        .join()
        .map_err(|_| anyhow!("cost thread panicked"))?
    })?;
    for s in &out {
        say(&format!(
            "{:<30} backends={:<5} {:>7.1} ns",
            s.scenario, s.n, s.ns
        ));
    }
    drop(lab);
    Ok(out)
}

/// Share of the table that moves when one of N backends is removed, per
/// table size (measured, next to the ideal 1/N).
pub fn disruption() -> Vec<(u32, usize, f64)> {
    let mut out = Vec::new();
    for m in [1009u32, 10_007, 65_537, 655_373] {
        for n in [10usize, 100, 1000] {
            if n as u32 > m / 2 {
                continue;
            }
            let ids: Vec<(BackendId, u32, State)> = (0..n)
                .map(|i| {
                    (
                        BackendId {
                            addr: IpAddr::V4(Ipv4Addr::new(
                                10,
                                196,
                                (i / 250) as u8,
                                (i % 250) as u8 + 1,
                            )),
                            port: 0,
                        },
                        1,
                        State::Up,
                    )
                })
                .collect();
            let mut rest = ids.clone();
            rest.remove(n / 2);
            let moved = core::plan::moved_share(&ids, m, &rest, m);
            out.push((m, n, moved));
        }
    }
    out
}

pub fn markdown(
    live: &[LiveLb],
    cost: &[CostLb],
    reqs: &[(&'static str, Vec<f64>)],
    dis: &[(u32, usize, f64)],
) -> String {
    let h = crate::report::human;
    let mut md = String::new();
    md.push_str("Forwarded packets per second (median of the rounds, min–max), UDP to the VIP, counted at the backends:\n\n| configuration | a new flow per packet | one flow |\n|---|---:|---:|\n");
    let cell = |v: &[f64]| {
        if v.is_empty() {
            return "—".to_string();
        }
        let (lo, hi) = (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        format!("{} ({}–{})", h(median(v)), h(lo), h(hi))
    };
    for r in live {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            r.config,
            cell(&r.new_flows),
            cell(&r.one_flow)
        ));
    }
    md.push_str("\nProgram cost per packet (BPF_PROG_TEST_RUN through the whole forwarding path: VIP, connection, Maglev, rewrite, FIB lookup, redirect), in ns: each packet is its own run (a program that rewrites cannot be timed with repeat: the kernel would run it again on the frame it rewrote), median of 500 runs per round (new connections: the sizes interleaved packet by packet, each SYN sent to every size in turn), median of the rounds (min–max). A single run includes the kernel timer's own cost, which the floor (an XDP program that only drops) shows:\n\n| scenario |");
    for n in COST_SIZES {
        md.push_str(&format!(" {n} backends |"));
    }
    md.push_str(" 1000 / 1 |\n|---|");
    for _ in COST_SIZES {
        md.push_str("---:|");
    }
    md.push_str("---:|\n");
    let mut scs: Vec<&str> = Vec::new();
    for c in cost {
        if !scs.contains(&c.scenario) {
            scs.push(c.scenario);
        }
    }
    for sc in scs {
        md.push_str(&format!("| {sc} |"));
        for n in COST_SIZES {
            match cost.iter().find(|c| c.scenario == sc && c.n == n) {
                Some(c) => md.push_str(&format!(
                    " {:.0} ({:.0}–{:.0}) |",
                    c.ns, c.spread.0, c.spread.1
                )),
                None => md.push_str(" — |"),
            }
        }
        let r = ratio_1000(cost, sc);
        md.push_str(&format!(
            " **{}** |\n",
            r.map_or("—".into(), |r| format!("{r:.2}x"))
        ));
    }
    md.push_str("\nHTTP requests per second (one client, ureq, a fresh connection per request: GET /, a 200 whose body is the backend's name), to three servers:\n\n| configuration | requests/s |\n|---|---:|\n");
    for (c, v) in reqs {
        md.push_str(&format!("| {c} | {} |\n", cell(v)));
    }
    md.push_str("\nMaglev: share of the table that moves when one of N equal backends is removed (ideal: 1/N):\n\n| table | N | moved | 1/N |\n|---:|---:|---:|---:|\n");
    for (m, n, d) in dis {
        md.push_str(&format!(
            "| {m} | {n} | {:.2}% | {:.2}% |\n",
            d * 100.0,
            100.0 / *n as f64
        ));
    }
    md
}

fn ratio_1000(cost: &[CostLb], sc: &str) -> Option<f64> {
    let a = cost.iter().find(|c| c.scenario == sc && c.n == 1)?;
    let b = cost.iter().find(|c| c.scenario == sc && c.n == 1000)?;
    Some(b.ns / a.ns)
}

/// The load balancer's bars.
pub fn bars(
    live: &[LiveLb],
    cost: &[CostLb],
    dis: &[(u32, usize, f64)],
) -> Vec<crate::report::Bar> {
    let mut out = Vec::new();
    let med = |c: &str| {
        live.iter()
            .find(|r| r.config == c)
            .filter(|r| !r.new_flows.is_empty())
            .map(|r| median(&r.new_flows))
    };
    let best_nft = ["nftables dnat numgen", "nftables dnat jhash"]
        .iter()
        .filter_map(|c| med(c))
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    let r = med("moat nat").zip(best_nft).map(|(m, n)| m / n.max(1.0));
    out.push(crate::report::Bar {
        what: "load balancer: forwarded rate (new flows, NAT) at least 3x nftables DNAT's best"
            .into(),
        measured: r.map_or("not measured".into(), |r| format!("{r:.1}x")),
        met: r.map(|r| r >= 3.0),
    });
    let mut scs: Vec<&str> = Vec::new();
    for c in cost {
        if !scs.contains(&c.scenario) && !c.scenario.starts_with("xdp-drop") {
            scs.push(c.scenario);
        }
    }
    let worst = scs
        .iter()
        .filter_map(|sc| ratio_1000(cost, sc).map(|r| (r, *sc)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    out.push(crate::report::Bar {
        what: "load balancer: cost at 1000 backends within 1.2x of 1".into(),
        measured: worst.map_or("not measured".into(), |(r, sc)| {
            format!("worst {sc}: {r:.2}x")
        }),
        met: worst.map(|(r, _)| r <= 1.2),
    });
    let worst_d = dis
        .iter()
        .filter(|(m, _, _)| *m == 65_537)
        .map(|(_, n, d)| (d - 1.0 / *n as f64, *n, *d))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    out.push(crate::report::Bar {
        what: "load balancer: Maglev disruption on a removal within 1/N + 1% (table 65537)".into(),
        measured: worst_d.map_or("not measured".into(), |(_, n, d)| {
            format!("worst N={n}: {:.2}% moved", d * 100.0)
        }),
        met: worst_d.map(|(x, _, _)| x <= 0.01),
    });
    out
}
