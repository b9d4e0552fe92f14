//! The readers behind `moat flows`, `moat top`, `moat metrics` and `moat
//! capture`: the flow table (allowed connections from fw_ct, denied flows from
//! fw_flows), drop/log events from the ring buffer, and every counter. They
//! read the pinned maps of the running firewall; nothing here changes it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use moat_abi::{
    count::CountValue,
    fw::{self as abi, FwCtKey, FwCtVal, FwEvent, FwFlowSlot},
};
use moat_core::fw::Cidr;
use serde::Serialize;

use super::{
    instance::{CT_TABLES, sum_percpu},
    state::{Kernel, Paths, State, StateFile, pinned_map, read_state_file},
};

/// One flow: an allowed connection (conntrack) or a denied flow.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Flow {
    pub verdict: &'static str,
    /// Direction of the flow's first packet.
    pub direction: &'static str,
    pub interface: String,
    pub proto: String,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since the first and the last packet.
    pub first_seen_secs_ago: f64,
    pub last_seen_secs_ago: f64,
    pub rule: String,
    /// Denied flows: why the last packet was dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Tracked TCP connections: their state (`syn_sent`, `established`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<&'static str>,
}

/// `moat flows` filters.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub remote: Option<Cidr>,
    pub port: Option<u16>,
    pub verdict: Option<String>,
    pub rule: Option<String>,
    pub iface: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.remote.is_none_or(|c| c.contains(f.remote))
            && self
                .port
                .is_none_or(|p| f.local_port == p || f.remote_port == p)
            && self.verdict.as_deref().is_none_or(|v| v == f.verdict)
            && self.rule.as_deref().is_none_or(|r| r == f.rule)
            && self.iface.as_deref().is_none_or(|i| i == f.interface)
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn addr(family: u8, b: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

pub fn dir_name(d: u8) -> &'static str {
    if d == abi::DIR_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Interface names of the firewall's interfaces by ifindex (looked up in
/// each interface's namespace).
pub fn iface_names(state: &State) -> HashMap<u32, String> {
    let mut m = HashMap::new();
    for i in &state.interfaces {
        let idx = match &i.netns {
            Some(ns) => crate::sys::NetnsGuard::enter(ns)
                .ok()
                .and_then(|_g| crate::traffic::ifindex(&i.name).ok()),
            None => crate::traffic::ifindex(&i.name).ok(),
        };
        if let Some(idx) = idx {
            m.insert(idx, i.name.clone());
        }
    }
    m
}

fn rule_name(state: &State, id: u32) -> String {
    match moat_core::fw::encode::RuleId(id).rule_index() {
        None => "(default)".into(),
        Some(i) => state
            .rules
            .get(i)
            .map_or_else(|| format!("#{id}"), |r| r.name.clone()),
    }
}

/// The denied-flow records (the used slots of the direct-mapped fw_flows).
fn flow_slots(paths: &Paths) -> Result<Vec<FwFlowSlot>> {
    let m = pinned_map(&paths.pins.join(abi::MAP_FLOWS))?;
    let a = Array::<_, FwFlowSlot>::try_from(&m)?;
    Ok(a.iter()
        .filter_map(Result::ok)
        .filter(|s| s.val.first_seen_ns != 0)
        .collect())
}

/// The connection tables' pressure, from the kernel's own counts: live
/// entries and capacity of each table, and what was pushed out. The LRU
/// tables evict silently, so evictions are computed: inserted - moved or
/// forgotten - still there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// New connections (fw_ct: not yet seen both ways).
    pub new_entries: u64,
    pub new_max: u64,
    /// Assured connections (fw_ct_assured).
    pub assured_entries: u64,
    pub assured_max: u64,
    /// Connections admitted and tracked since the tables were made.
    pub inserted: u64,
    /// Of those, moved to the assured table.
    pub assured: u64,
    /// Forgotten after their idle timeout.
    pub expired: u64,
    /// New entries pushed out by newer ones (nf_conntrack's early drops).
    pub evicted_new: u64,
    /// Assured entries pushed out by other assured ones (table full).
    pub evicted_assured: u64,
}

impl Conntrack {
    /// From the reason counters (`STAT_*`) and the live entry counts.
    pub fn of(reasons: &[CountValue], new: (u64, u64), assured: (u64, u64)) -> Conntrack {
        let c = |i: u32| reasons.get(i as usize).map_or(0, |v| v.packets);
        Conntrack {
            new_entries: new.0,
            new_max: new.1,
            assured_entries: assured.0,
            assured_max: assured.1,
            inserted: c(abi::STAT_CT_NEW),
            assured: c(abi::STAT_CT_ASSURED),
            expired: c(abi::STAT_CT_EXPIRED),
            evicted_new: c(abi::STAT_CT_NEW)
                .saturating_sub(c(abi::STAT_CT_MOVED) + c(abi::STAT_CT_FORGOT_NEW) + new.0),
            evicted_assured: c(abi::STAT_CT_ASSURED)
                .saturating_sub(c(abi::STAT_CT_FORGOT_ASSURED) + assured.0),
        }
    }
}

fn open_hash<V: aya::Pod>(path: &Path) -> Result<(BpfHashMap<MapData, FwCtKey, V>, u32)> {
    let data = MapData::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    let max = data.info().map(|i| i.max_entries()).unwrap_or(0);
    let map = Map::from_map_data(data)?;
    Ok((BpfHashMap::try_from(map)?, max))
}

/// The running firewall's description: the state file when it describes the
/// generation the kernel runs, else what the kernel alone says (rules by id).
pub fn running(paths: &Paths) -> Result<State> {
    let kernel = Kernel::read(paths, |_| None);
    if kernel.is_empty() {
        bail!("the firewall is not attached (moat fw apply -f POLICY -i IFACE)");
    }
    Ok(running_from(&kernel, read_state_file(paths)))
}

/// [`running`] from a kernel view and a state file already read.
pub fn running_from(kernel: &Kernel, file: StateFile) -> State {
    let gens = kernel.generations();
    match file {
        StateFile::Ok(s) if gens == [s.generation] => s,
        _ => State {
            generation: gens.last().copied().unwrap_or(0),
            policy: PathBuf::new(),
            applied_unix: 0,
            default_ingress: "?".into(),
            default_egress: "?".into(),
            rules: Vec::new(),
            interfaces: kernel.interfaces.iter().map(|k| k.iface.clone()).collect(),
            addr4_entries: 0,
            addr6_entries: 0,
            verdict_entries: 0,
            classes: 0,
            memory_bytes: 0,
            maps: Vec::new(),
        },
    }
}

/// Every flow the firewall tracks right now.
pub fn flows(paths: &Paths) -> Result<Vec<Flow>> {
    let state = running(paths)?;
    let names = iface_names(&state);
    let now = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
    let ago = |t: u64| now.saturating_sub(t) as f64 / 1e9;
    let iface = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    // The parts both tables share: key, direction, interface, counters, times.
    let flow =
        |k: &FwCtKey, verdict, dir, ifindex, (packets, bytes), (first, last), rule, reason| Flow {
            verdict,
            direction: dir_name(dir),
            interface: iface(ifindex),
            proto: proto_name(k.proto),
            local: addr(k.family, &k.local),
            local_port: u16::from_be(k.lport),
            remote: addr(k.family, &k.remote),
            remote_port: u16::from_be(k.rport),
            packets,
            bytes,
            first_seen_secs_ago: ago(first),
            last_seen_secs_ago: ago(last),
            rule: rule_name(&state, rule),
            reason,
            tcp_state: None,
        };
    let mut out = Vec::new();
    let mut tracked = Vec::new();
    for t in CT_TABLES {
        let (ct, _) = open_hash::<FwCtVal>(&paths.pins.join(t))?;
        tracked.extend(ct.iter().filter_map(Result::ok));
    }
    for (k, v) in tracked {
        let mut f = flow(
            &k,
            "allow",
            v.dir0,
            v.ifindex,
            (v.packets, v.bytes),
            (v.first_seen_ns, v.last_seen_ns),
            v.rule,
            None,
        );
        if k.proto == 6 && v.tcp_state != abi::TCP_NONE {
            f.tcp_state = abi::TCP_STATE_NAMES.get(v.tcp_state as usize).copied();
        }
        out.push(f);
    }
    for FwFlowSlot { key: k, val: v } in flow_slots(paths)? {
        out.push(flow(
            &k,
            "deny",
            v.dir,
            v.ifindex,
            (v.packets, v.bytes),
            (v.first_seen_ns, v.last_seen_ns),
            v.rule,
            abi::STAT_NAMES.get(v.reason as usize).copied(),
        ));
    }
    out.sort_by(|a, b| {
        a.first_seen_secs_ago
            .total_cmp(&b.first_seen_secs_ago)
            .reverse()
    });
    Ok(out)
}

/// The firewall's event ring buffer.
pub struct Events {
    rb: RingBuf<MapData>,
}

impl Events {
    pub fn open(paths: &Paths) -> Result<Events> {
        let p = paths.pins.join(abi::MAP_EVENTS);
        let data = MapData::from_pin(&p).map_err(|e| anyhow!("opening {}: {e}", p.display()))?;
        Ok(Events {
            rb: RingBuf::try_from(Map::RingBuf(data))?,
        })
    }

    /// Waits until events are ready or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.rb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The next event, if one is ready.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<FwEvent> {
        let item = self.rb.next()?;
        FwEvent::from_bytes(&item)
    }
}

/// An event with names and the packet's addresses, for printing.
#[derive(Clone, Debug, Serialize)]
pub struct DecodedEvent {
    pub event: &'static str,
    pub direction: &'static str,
    pub interface: String,
    pub reason: &'static str,
    pub rule: String,
    pub packet_len: u32,
    #[serde(flatten)]
    pub tuple: Option<Tuple>,
    /// Wall-clock time of the event (Unix seconds).
    pub time_unix: f64,
}

/// Addresses and ports read from a captured frame.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Tuple {
    pub proto: String,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// Parses Ethernet (up to two VLAN tags), IPv4/IPv6 and TCP/UDP ports.
pub fn tuple(frame: &[u8]) -> Option<Tuple> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    off += 2;
    for _ in 0..2 {
        if et == 0x8100 || et == 0x88a8 {
            et = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
            off += 4;
        }
    }
    let (proto, src, dst, l4) = match et {
        0x0800 => {
            let ip = frame.get(off..off + 20)?;
            let ihl = usize::from(ip[0] & 0xF) * 4;
            (
                ip[9],
                IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
                IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
                off + ihl,
            )
        }
        0x86DD => {
            let ip = frame.get(off..off + 40)?;
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            (ip[6], IpAddr::V6(s.into()), IpAddr::V6(d.into()), off + 40)
        }
        _ => return None,
    };
    let (sp, dp) = if proto == 6 || proto == 17 {
        let p = frame.get(l4..l4 + 4);
        p.map_or((0, 0), |p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        })
    } else {
        (0, 0)
    };
    Some(Tuple {
        proto: proto_name(proto),
        src,
        src_port: sp,
        dst,
        dst_port: dp,
    })
}

/// Converts a CLOCK_MONOTONIC timestamp to Unix time (ns).
pub fn mono_to_unix_ns(ts: u64) -> u64 {
    let (real, mono) = (
        clock_ns(libc::CLOCK_REALTIME),
        clock_ns(libc::CLOCK_MONOTONIC),
    );
    (real - mono).wrapping_add(ts)
}

impl DecodedEvent {
    pub fn new(e: &FwEvent, state: &State, names: &HashMap<u32, String>) -> DecodedEvent {
        DecodedEvent {
            event: if e.kind == abi::EVENT_LOG {
                "log"
            } else {
                "drop"
            },
            direction: dir_name(e.dir),
            interface: names
                .get(&e.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", e.ifindex)),
            reason: abi::STAT_NAMES
                .get(e.reason as usize)
                .copied()
                .unwrap_or("?"),
            rule: rule_name(state, e.rule),
            packet_len: e.pkt_len,
            tuple: tuple(e.frame()),
            time_unix: mono_to_unix_ns(e.ts_ns) as f64 / 1e9,
        }
    }

    pub fn matches(&self, f: &FlowFilter) -> bool {
        let verdict = if self.event == "drop" {
            "deny"
        } else {
            "allow"
        };
        f.verdict.as_deref().is_none_or(|v| v == verdict)
            && f.rule.as_deref().is_none_or(|r| r == self.rule)
            && f.iface.as_deref().is_none_or(|i| i == self.interface)
            && match &self.tuple {
                Some(t) => {
                    let remote = if self.direction == "ingress" {
                        t.src
                    } else {
                        t.dst
                    };
                    f.remote.is_none_or(|c| c.contains(remote))
                        && f.port.is_none_or(|p| t.src_port == p || t.dst_port == p)
                }
                None => f.remote.is_none() && f.port.is_none(),
            }
    }

    pub fn line(&self) -> String {
        let t = self.tuple.as_ref().map_or_else(String::new, |t| {
            format!(
                "{} {} -> {}",
                t.proto,
                endpoint(t.src, t.src_port),
                endpoint(t.dst, t.dst_port)
            )
        });
        format!(
            "EVENT {:<4} {:<7} {:<10} {t}  {} B  {} ({})",
            self.event, self.direction, self.interface, self.packet_len, self.rule, self.reason
        )
    }
}

/// The firewall's counters, as metrics and `moat top` read them.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub generation: u32,
    /// Per `STAT_*` reason.
    pub reasons: Vec<CountValue>,
    /// (rule name, direction, action, hits), id 0 = the defaults.
    pub rules: Vec<(String, String, String, CountValue)>,
    /// Per `EV_*`.
    pub events: Vec<u64>,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, u64, u64)>,
    /// (interface, direction, verdict "pass"/"drop", packets and bytes).
    pub ifaces: Vec<(String, &'static str, &'static str, CountValue)>,
    pub conntrack: Conntrack,
}

/// Reads every counter of the running firewall.
pub fn counters(paths: &Paths) -> Result<Counters> {
    counters_of(paths, &running(paths)?)
}

/// [`counters`] of the firewall `state` describes (from [`running_from`]).
pub fn counters_of(paths: &Paths, state: &State) -> Result<Counters> {
    let stats_map = pinned_map(&paths.pins.join(abi::MAP_STATS))?;
    let reasons = sum_percpu(&PerCpuArray::<_, CountValue>::try_from(&stats_map)?)?;
    let rules_map = pinned_map(&paths.rule_stats())?;
    let hits = sum_percpu(&PerCpuArray::<_, CountValue>::try_from(&rules_map)?)?;
    // Names from the state file; without one, rules go by id.
    let n_rules = if state.rules.is_empty() {
        hits.len().saturating_sub(1)
    } else {
        state.rules.len()
    };
    let rules = std::iter::once(("(default)".to_string(), String::new(), String::new()))
        .chain((0..n_rules).map(|i| match state.rules.get(i) {
            Some(r) => (r.name.clone(), r.direction.clone(), r.action.clone()),
            None => (format!("#{}", i + 1), String::new(), String::new()),
        }))
        .enumerate()
        .map(|(i, (n, d, a))| (n, d, a, hits.get(i).copied().unwrap_or_default()))
        .collect();
    let ev_map = pinned_map(&paths.pins.join(abi::MAP_EVSTATS))?;
    let ev_arr = PerCpuArray::<_, u64>::try_from(&ev_map)?;
    let mut events = vec![0u64; abi::EV_MAX as usize];
    for (i, slot) in events.iter_mut().enumerate() {
        if let Ok(v) = ev_arr.get(&(i as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    super::instance::fill_seen(&mut events);
    let mut maps = Vec::new();
    for t in CT_TABLES {
        let (ct, max) = open_hash::<FwCtVal>(&paths.pins.join(t))?;
        maps.push((
            t,
            ct.keys().filter(Result::is_ok).count() as u64,
            u64::from(max),
        ));
    }
    maps.push((
        abi::MAP_FLOWS,
        flow_slots(paths)?.len() as u64,
        u64::from(abi::FLOW_SLOTS),
    ));
    let fill = |name: &str| {
        maps.iter()
            .find(|m| m.0 == name)
            .map_or((0, 0), |m| (m.1, m.2))
    };
    let conntrack = Conntrack::of(&reasons, fill(abi::MAP_CT), fill(abi::MAP_CT_ASSURED));
    // The policy maps: entries and capacity as loaded (recorded at apply).
    const POLICY_MAPS: [&str; 6] = [
        abi::MAP_HOST4,
        abi::MAP_ADDR4,
        abi::MAP_HOST6,
        abi::MAP_ADDR6,
        abi::MAP_PORTS,
        abi::MAP_VERDICT,
    ];
    for m in &state.maps {
        if let Some(name) = POLICY_MAPS.iter().find(|n| **n == m.name) {
            maps.push((name, m.entries as u64, u64::from(m.capacity)));
        }
    }
    // Per interface: one slot per ifindex modulo IF_SLOTS; interfaces that
    // share a slot are named together.
    let if_map = pinned_map(&paths.pins.join(abi::MAP_IFSTATS))?;
    let if_arr = PerCpuArray::<_, CountValue>::try_from(&if_map)?;
    let mut slots: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for (idx, name) in iface_names(state) {
        slots.entry(idx % abi::IF_SLOTS).or_default().push(name);
    }
    let mut ifaces = Vec::new();
    for (slot, mut names) in slots {
        names.sort();
        let name = names.join("+");
        for dir in [abi::DIR_INGRESS, abi::DIR_EGRESS] {
            for dropped in [false, true] {
                let v = if_arr
                    .get(&abi::ifstat_idx(slot, dir, dropped), 0)
                    .map(|per_cpu| {
                        per_cpu
                            .iter()
                            .fold(CountValue::default(), |a, b| CountValue {
                                packets: a.packets + b.packets,
                                bytes: a.bytes + b.bytes,
                            })
                    })
                    .unwrap_or_default();
                ifaces.push((
                    name.clone(),
                    dir_name(dir),
                    if dropped { "drop" } else { "pass" },
                    v,
                ));
            }
        }
    }
    Ok(Counters {
        generation: state.generation,
        reasons,
        rules,
        events,
        maps,
        ifaces,
        conntrack,
    })
}

pub fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{p}"),
        IpAddr::V6(_) => format!("[{a}]:{p}"),
    }
}
