//! What the load balancer runs, read from the kernel: pinned services,
//! backends, counters, connections, the live config and the pinned links.

use std::{collections::HashMap, os::fd::AsFd};

use anyhow::Result;
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use moat_abi::{
    count::CountValue,
    lb::{self as abi, LbBackend, LbConfig, LbCtKey, LbCtVal, LbSvc},
};
use moat_core::lb::{
    self as core, State,
    encode::{Running, backend_id, ip_of, svc_name},
    hash_names,
};
use serde::Serialize;

use crate::bpfsys;
use crate::fw::{
    instance::sum_percpu,
    state::{Paths, pinned_map},
};

/// Where the live config map of the instance in force is pinned.
pub const LIVE_CONFIG: &str = "lb_config_live";

pub fn paths() -> Paths {
    Paths::from_env_family(abi::PIN_DIR)
}

/// The instance in force's config (table size, generation, idle timeouts).
pub fn live_config(p: &Paths) -> Option<LbConfig> {
    let m = pinned_map(&p.pins.join(LIVE_CONFIG)).ok()?;
    let a: Array<_, LbConfig> = Array::try_from(m).ok()?;
    a.get(&0, 0).ok()
}

/// Services and backends the kernel holds (used slots only).
pub fn running(p: &Paths) -> Running {
    let mut r = Running {
        table: live_config(p).map_or(0, |c| c.table_size),
        ..Default::default()
    };
    if let Ok(m) = pinned_map(&p.pins.join(abi::MAP_SVCS))
        && let Ok(a) = Array::<_, LbSvc>::try_from(m)
    {
        for i in 0..abi::MAX_SERVICES {
            if let Ok(s) = a.get(&i, 0)
                && s.used != 0
            {
                r.services.push((i, s));
            }
        }
    }
    if let Ok(m) = pinned_map(&p.pins.join(abi::MAP_BACKENDS))
        && let Ok(a) = Array::<_, LbBackend>::try_from(m)
    {
        for i in 0..abi::MAX_BACKENDS {
            if let Ok(b) = a.get(&i, 0)
                && b.state != abi::B_EMPTY
            {
                r.backends.push((i, b));
            }
        }
    }
    r
}

/// The interfaces the balancer runs on: its own live XDP links and the
/// interfaces where it is chained behind the firewall (pin name ending in
/// `@chain`): (pin name, netns, iface).
pub fn links(p: &Paths) -> Vec<(String, Option<String>, String)> {
    let mut out = crate::chain::chained(p);
    let Ok(rd) = std::fs::read_dir(p.links()) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('@').collect();
        if parts.len() != 3 || parts[2] != "xdp" {
            continue;
        }
        let live = bpfsys::obj_get(&e.path())
            .ok()
            .and_then(|fd| bpfsys::link_info(fd.as_fd()).ok())
            .is_some_and(|l| l.ifindex != 0 && l.prog_id != 0);
        if live {
            let ns = (parts[0] != "host").then(|| parts[0].to_string());
            out.push((name.clone(), ns, parts[1].to_string()));
        }
    }
    out.sort();
    out
}

/// Tracked connections (client side key, value).
pub fn connections(p: &Paths) -> Vec<(LbCtKey, LbCtVal)> {
    let Ok(m) = pinned_map(&p.pins.join(abi::MAP_CT)) else {
        return vec![];
    };
    let Ok(h) = BpfHashMap::<_, LbCtKey, LbCtVal>::try_from(m) else {
        return vec![];
    };
    h.iter().filter_map(Result::ok).collect()
}

fn percpu(p: &Paths, name: &str) -> Vec<CountValue> {
    pinned_map(&p.pins.join(name))
        .ok()
        .and_then(|m| PerCpuArray::<_, CountValue>::try_from(m).ok())
        .and_then(|a| sum_percpu(&a).ok())
        .unwrap_or_default()
}

/// Per backend slot: packets, bytes and connections, summed over CPUs.
fn backend_counts(p: &Paths) -> Vec<abi::LbBcount> {
    let Ok(m) = pinned_map(&p.pins.join(abi::MAP_BSTATS)) else {
        return vec![];
    };
    let Ok(a) = PerCpuArray::<_, abi::LbBcount>::try_from(m) else {
        return vec![];
    };
    sum_bcounts(&a).unwrap_or_default()
}

/// Sums a per-CPU array of backend counters over CPUs.
pub fn sum_bcounts<T: std::borrow::Borrow<aya::maps::MapData>>(
    a: &PerCpuArray<T, abi::LbBcount>,
) -> Result<Vec<abi::LbBcount>> {
    let mut out = Vec::with_capacity(a.len() as usize);
    for i in 0..a.len() {
        let v = a.get(&i, 0)?;
        out.push(
            v.iter()
                .fold(abi::LbBcount::default(), |s, c| abi::LbBcount {
                    packets: s.packets + c.packets,
                    bytes: s.bytes + c.bytes,
                    conns: s.conns + c.conns,
                    pad: 0,
                }),
        );
    }
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub slot: u32,
    pub weight: u32,
    pub state: &'static str,
    /// Share of the service's Maglev table (0..1).
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
    /// Connections it was given since it joined.
    pub connections_total: u64,
    /// Tracked connections now (not idle past their timeout).
    pub connections: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub frontend: String,
    pub mode: &'static str,
    pub hash: Vec<&'static str>,
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LbStatus {
    pub running: bool,
    pub generation: u32,
    pub table: u32,
    pub interfaces: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Counters per reason (name, packets, bytes).
    pub reasons: Vec<(String, u64, u64)>,
    pub conntrack_entries: u64,
    pub conntrack_max: u32,
}

pub fn status_at(p: &Paths) -> Result<LbStatus> {
    let live = live_config(p);
    let r = running(p);
    let links = links(p);
    let bstats = backend_counts(p);
    let sstats = percpu(p, abi::MAP_SSTATS);
    let reasons = percpu(p, abi::MAP_STATS);
    let conns = connections(p);
    let now = crate::fw::observe::clock_ns(libc::CLOCK_MONOTONIC);
    let mut live_per_slot: HashMap<u32, u64> = HashMap::new();
    for (k, v) in &conns {
        let mut idle = live.map_or(u64::MAX, |c| {
            if k.proto == 6 {
                c.tcp_idle_ns
            } else {
                c.udp_idle_ns
            }
        });
        if v.closing != 0 {
            idle = idle.min(abi::CLOSING_SECS * 1_000_000_000);
        }
        let b = r.backends.iter().find(|(s, _)| *s == v.slot);
        let same = b.is_some_and(|(_, b)| b.addr == v.backend && b.port == v.bport);
        if same && now.saturating_sub(v.last_ns) <= idle {
            *live_per_slot.entry(v.slot).or_default() += 1;
        }
    }
    let table = live.map_or(r.table, |c| c.table_size);
    let services = core::encode::services_of(&r);
    let mut out = Vec::new();
    for ((sid, s), svc) in r.services.iter().zip(&services) {
        let members: Vec<(u32, &LbBackend)> = r
            .backends
            .iter()
            .filter(|(_, b)| b.svc == *sid)
            .map(|(slot, b)| (*slot, b))
            .collect();
        let view: Vec<_> = members
            .iter()
            .map(|(_, b)| {
                (
                    backend_id(b),
                    b.weight,
                    State::of_abi(b.state).unwrap_or(State::Down),
                )
            })
            .collect();
        let shares = if table >= 3 {
            core::maglev::shares(&core::service_table(&view, table), view.len())
        } else {
            vec![0; view.len()]
        };
        let backends: Vec<BackendStatus> = members
            .iter()
            .enumerate()
            .map(|(i, (slot, b))| BackendStatus {
                address: backend_id(b).to_string(),
                slot: *slot,
                weight: b.weight,
                state: State::of_abi(b.state).map_or("?", State::name),
                share: if table > 0 {
                    shares[i] as f64 / table as f64
                } else {
                    0.0
                },
                packets: bstats.get(*slot as usize).map_or(0, |c| c.packets),
                bytes: bstats.get(*slot as usize).map_or(0, |c| c.bytes),
                connections_total: bstats.get(*slot as usize).map_or(0, |c| c.conns),
                connections: live_per_slot.get(slot).copied().unwrap_or(0),
            })
            .collect();
        let _ = ip_of;
        out.push(ServiceStatus {
            name: svc_name(s),
            frontend: svc.frontend(),
            mode: svc.mode.name(),
            hash: hash_names(s.hash),
            packets: sstats.get(*sid as usize).map_or(0, |c| c.packets),
            bytes: sstats.get(*sid as usize).map_or(0, |c| c.bytes),
            connections: backends.iter().map(|b| b.connections).sum(),
            backends,
        });
    }
    let ct_max = super::instance::pinned_max(&p.pins.join(abi::MAP_CT)).unwrap_or(0);
    Ok(LbStatus {
        running: !links.is_empty(),
        generation: live.map_or(0, |c| c.generation),
        table,
        interfaces: links
            .iter()
            .map(|(pin, ns, i)| {
                let after = if pin.ends_with("@chain") {
                    ", after the firewall"
                } else {
                    ""
                };
                match ns {
                    Some(n) => format!("{i} (netns {n}{after})"),
                    None if after.is_empty() => i.clone(),
                    None => format!("{i} (after the firewall)"),
                }
            })
            .collect(),
        services: out,
        reasons: abi::STAT_NAMES
            .iter()
            .zip(
                reasons
                    .iter()
                    .chain(std::iter::repeat(&CountValue::default())),
            )
            .map(|(n, c)| (n.to_string(), c.packets, c.bytes))
            .collect(),
        conntrack_entries: conns.len() as u64,
        conntrack_max: ct_max,
    })
}

/// One balanced connection, for `moat flows`.
#[derive(Clone, Debug, Serialize)]
pub struct Balanced {
    pub kind: &'static str,
    pub service: String,
    pub proto: &'static str,
    pub client: String,
    pub vip: String,
    pub backend: String,
    /// The backend still holds the slot it had when chosen.
    pub backend_live: bool,
    pub closing: bool,
    pub last_seen_secs_ago: f64,
}

pub fn balanced(p: &Paths) -> Vec<Balanced> {
    let r = running(p);
    let now = crate::fw::observe::clock_ns(libc::CLOCK_MONOTONIC);
    let ep = |a: std::net::IpAddr, port: u16| crate::fw::observe::endpoint(a, port);
    let mut out: Vec<Balanced> = connections(p)
        .into_iter()
        .map(|(k, v)| {
            let svc = r.services.iter().find(|(id, _)| *id == v.svc);
            let b = r.backends.iter().find(|(s, _)| *s == v.slot);
            let live =
                b.is_some_and(|(_, b)| b.addr == v.backend && b.port == v.bport && b.svc == v.svc);
            let bport = if v.bport != 0 { v.bport } else { k.vport };
            Balanced {
                kind: "balanced",
                service: svc.map_or_else(|| format!("#{}", v.svc), |(_, s)| svc_name(s)),
                proto: core::proto_name(k.proto),
                client: ep(ip_of(&k.client, k.family), u16::from_be(k.cport)),
                vip: ep(ip_of(&k.vip, k.family), u16::from_be(k.vport)),
                backend: ep(ip_of(&v.backend, k.family), u16::from_be(bport)),
                backend_live: live,
                closing: v.closing != 0,
                last_seen_secs_ago: now.saturating_sub(v.last_ns) as f64 / 1e9,
            }
        })
        .collect();
    out.sort_by(|a, b| a.last_seen_secs_ago.total_cmp(&b.last_seen_secs_ago));
    out
}
