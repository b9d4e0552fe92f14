//! A config (or what runs, with a changed backend state) encoded into the
//! load balancer's map entries. Service ids and backend slots are stable:
//! a service keeps its id and a backend its slot (and its state) as long as
//! it is in the config, so tracked connections and counters stay with it.

use std::net::IpAddr;

use moat_abi::lb::{self as abi, LbBack, LbBackend, LbConfig, LbSvc, LbVip, LbVipKey};

use super::{
    BackendId, LbConfig as Config, Mode, Service, State, hash::addr_bytes, maglev, plan::SvcView,
    service_table,
};

/// What the kernel holds now (pinned lb_svcs and lb_backends, used slots only).
#[derive(Clone, Debug, Default)]
pub struct Running {
    pub services: Vec<(u32, LbSvc)>,
    pub backends: Vec<(u32, LbBackend)>,
    /// The table size of the instance in force (0: none).
    pub table: u32,
}

#[derive(Clone, Debug)]
pub struct Encoded {
    pub table: u32,
    pub vips: Vec<(LbVipKey, LbVip)>,
    /// Where NAT backends' replies come from (see `lb_back` in abi/lb.h).
    pub back: Vec<(LbVipKey, LbBack)>,
    /// `table` entries per service, services in `services` order.
    pub maglev: Vec<u32>,
    pub services: Vec<(u32, LbSvc)>,
    pub backends: Vec<(u32, LbBackend)>,
    /// Slots and service ids in use now that the config drops: emptied once
    /// the new instance runs.
    pub drop_backends: Vec<u32>,
    pub drop_services: Vec<u32>,
    pub config: LbConfig,
}

fn back_key(a: IpAddr, port: u16, proto: u8) -> LbVipKey {
    LbVipKey {
        addr: addr_bytes(a),
        port: port.to_be(),
        proto,
        family: family(a),
    }
}

pub fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

pub fn ip_of(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

pub fn svc_name(s: &LbSvc) -> String {
    let end = s.name.iter().position(|&b| b == 0).unwrap_or(s.name.len());
    String::from_utf8_lossy(&s.name[..end]).into_owned()
}

pub fn backend_id(b: &LbBackend) -> BackendId {
    BackendId {
        addr: ip_of(&b.addr, b.family),
        port: u16::from_be(b.port),
    }
}

/// The services of what runs, as a config would describe them (health
/// checks are not kept by the kernel).
pub fn services_of(r: &Running) -> Vec<Service> {
    r.services
        .iter()
        .map(|(id, s)| Service {
            name: svc_name(s),
            vip: ip_of(&s.vip, s.family),
            port: (s.port != 0).then(|| u16::from_be(s.port)),
            proto: s.proto,
            mode: if s.mode == abi::MODE_DSR {
                Mode::Dsr
            } else {
                Mode::Nat
            },
            hash: s.hash,
            backends: r
                .backends
                .iter()
                .filter(|(_, b)| b.svc == *id)
                .map(|(_, b)| super::Backend {
                    addr: ip_of(&b.addr, b.family),
                    port: (b.port != 0).then(|| u16::from_be(b.port)),
                    weight: b.weight,
                    line: 0,
                })
                .collect(),
            health: None,
            reset_on_down: r
                .backends
                .iter()
                .any(|(_, b)| b.svc == *id && b.flags & abi::BF_RESET_DOWN != 0),
            line: 0,
        })
        .collect()
}

/// Views for `plan`: a config's services with the states they would run with.
pub fn views(services: &[Service], r: &Running) -> Vec<SvcView> {
    services
        .iter()
        .map(|s| SvcView {
            name: s.name.clone(),
            frontend: s.frontend(),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    (
                        b.id(),
                        b.weight,
                        state_now(r, &s.name, b.id()).unwrap_or(State::Up),
                    )
                })
                .collect(),
        })
        .collect()
}

/// The state a backend of service `svc` has in the kernel, if it runs.
pub fn state_now(r: &Running, svc: &str, id: BackendId) -> Option<State> {
    let sid = r.services.iter().find(|(_, s)| svc_name(s) == svc)?.0;
    r.backends
        .iter()
        .find(|(_, b)| b.svc == sid && backend_id(b) == id)
        .and_then(|(_, b)| State::of_abi(b.state))
}

/// Encodes `services` over what runs; `state_of` may override a backend's
/// state (None: keep the kernel's, new backends start up).
pub fn encode(
    cfg: &Config,
    services: &[Service],
    r: &Running,
    generation: u32,
    state_of: &dyn Fn(&str, BackendId) -> Option<State>,
) -> Result<Encoded, String> {
    let m = cfg.table;
    let mut used_svc: Vec<bool> = vec![false; abi::MAX_SERVICES as usize];
    let mut used_slot: Vec<bool> = vec![false; abi::MAX_BACKENDS as usize];
    let mut out = Encoded {
        table: m,
        vips: Vec::new(),
        back: Vec::new(),
        maglev: Vec::with_capacity(services.len() * m as usize),
        services: Vec::new(),
        backends: Vec::new(),
        drop_backends: Vec::new(),
        drop_services: Vec::new(),
        config: LbConfig {
            table_size: m,
            generation,
            udp_idle_ns: cfg.udp_idle_s * 1_000_000_000,
            tcp_idle_ns: cfg.tcp_idle_s * 1_000_000_000,
        },
    };
    // Ids kept by name, slots by (service, backend).
    let svc_ids: Vec<Option<u32>> = services
        .iter()
        .map(|s| {
            r.services
                .iter()
                .find(|(_, x)| svc_name(x) == s.name)
                .map(|(i, _)| *i)
        })
        .collect();
    // Everything that runs now stays taken until the new instance runs: the
    // old one's tables may still name a slot this config drops.
    for (id, _) in &r.services {
        used_svc[*id as usize % abi::MAX_SERVICES as usize] = true;
    }
    for (slot, _) in &r.backends {
        used_slot[*slot as usize % abi::MAX_BACKENDS as usize] = true;
    }
    let mut next_svc = 0usize;
    let mut echo: Vec<IpAddr> = Vec::new();
    // Slots of backends that stay.
    let mut kept: Vec<Vec<Option<u32>>> = Vec::new();
    for (s, id) in services.iter().zip(&svc_ids) {
        let mut k = Vec::new();
        for b in &s.backends {
            let slot = id.and_then(|sid| {
                r.backends
                    .iter()
                    .find(|(_, x)| x.svc == sid && backend_id(x) == b.id())
                    .map(|(slot, _)| *slot)
            });
            k.push(slot);
        }
        kept.push(k);
    }
    let mut next_slot = 0usize;
    for (i, s) in services.iter().enumerate() {
        let sid = match svc_ids[i] {
            Some(id) => id,
            None => {
                while next_svc < used_svc.len() && used_svc[next_svc] {
                    next_svc += 1;
                }
                if next_svc == used_svc.len() {
                    return Err(format!("more than {} services", abi::MAX_SERVICES));
                }
                used_svc[next_svc] = true;
                next_svc as u32
            }
        };
        let mut name = [0u8; 32];
        name[..s.name.len()].copy_from_slice(s.name.as_bytes());
        out.services.push((
            sid,
            LbSvc {
                name,
                vip: addr_bytes(s.vip),
                port: s.port.unwrap_or(0).to_be(),
                proto: s.proto,
                family: family(s.vip),
                mode: s.mode.abi(),
                hash: s.hash,
                used: 1,
                pad: 0,
            },
        ));
        let mut members = Vec::new();
        let mut slots = Vec::new();
        for (j, b) in s.backends.iter().enumerate() {
            let slot = match kept[i][j] {
                Some(slot) => slot,
                None => {
                    while next_slot < used_slot.len() && used_slot[next_slot] {
                        next_slot += 1;
                    }
                    if next_slot == used_slot.len() {
                        return Err(format!("more than {} backends", abi::MAX_BACKENDS));
                    }
                    used_slot[next_slot] = true;
                    next_slot as u32
                }
            };
            let state = state_of(&s.name, b.id())
                .or_else(|| state_now(r, &s.name, b.id()))
                .unwrap_or(State::Up);
            out.backends.push((
                slot,
                LbBackend {
                    addr: addr_bytes(b.addr),
                    port: b.port.unwrap_or(0).to_be(),
                    family: family(b.addr),
                    state: state.abi(),
                    svc: sid,
                    weight: b.weight,
                    flags: if s.reset_on_down {
                        abi::BF_RESET_DOWN
                    } else {
                        0
                    },
                },
            ));
            members.push((b.id(), b.weight, state));
            slots.push(slot);
        }
        let table_off = (i as u32) * m;
        out.maglev
            .extend(service_table(&members, m).into_iter().map(|e| {
                if e == maglev::NONE {
                    abi::NONE
                } else {
                    slots[e as usize]
                }
            }));
        out.vips.push((
            LbVipKey {
                addr: addr_bytes(s.vip),
                port: s.port.unwrap_or(0).to_be(),
                proto: s.proto,
                family: family(s.vip),
            },
            LbVip {
                svc: sid,
                table_off,
                mode: s.mode.abi(),
                hash: s.hash,
                flags: 0,
                pad: [0; 5],
            },
        ));
        if !echo.contains(&s.vip) {
            echo.push(s.vip);
        }
    }
    for a in echo {
        out.vips.push((
            LbVipKey {
                addr: addr_bytes(a),
                port: 0,
                proto: if a.is_ipv4() { 1 } else { 58 },
                family: family(a),
            },
            LbVip {
                svc: abi::NONE,
                table_off: 0,
                mode: 0,
                hash: 0,
                flags: abi::VIP_ECHO,
                pad: [0; 5],
            },
        ));
    }
    // NAT replies: (backend, the source port of its replies) -> the VIP and
    // port they answer for. The same key from two services is ambiguous:
    // those backends keep per-connection reverse entries instead.
    let mut ambiguous: Vec<LbVipKey> = Vec::new();
    for (i, s) in services.iter().enumerate() {
        if s.mode != Mode::Nat {
            continue;
        }
        let sid = out.services[i].0;
        for b in &s.backends {
            // Replies come from the backend's port, or (no remap) the VIP's.
            let (sport, vport) = match (b.port, s.port) {
                (Some(q), Some(p)) => (q, p),
                (None, Some(p)) => (p, 0),
                (None, None) => (0, 0),
                // An any-port VIP remapped to one port: replies cannot say
                // which VIP port they answer.
                (Some(q), None) => {
                    let k = back_key(b.addr, q, s.proto);
                    ambiguous.push(k);
                    continue;
                }
            };
            let k = back_key(b.addr, sport, s.proto);
            let v = LbBack {
                vip: addr_bytes(s.vip),
                vport: vport.to_be(),
                flags: 0,
                pad: 0,
                svc: sid,
            };
            match out.back.iter().find(|(x, _)| *x == k) {
                Some((_, old)) if *old != v => ambiguous.push(k),
                Some(_) => {}
                None => out.back.push((k, v)),
            }
        }
    }
    for k in &ambiguous {
        match out.back.iter_mut().find(|(x, _)| x == k) {
            Some((_, v)) => v.flags |= abi::BACK_AMBIG,
            None => out.back.push((
                *k,
                LbBack {
                    flags: abi::BACK_AMBIG,
                    ..Default::default()
                },
            )),
        }
    }
    // A backend whose replies are ambiguous (also through a wildcard) keeps
    // lb_rev entries.
    for (slot_i, (_, b)) in out.backends.iter_mut().enumerate() {
        let _ = slot_i;
        let addr = ip_of(&b.addr, b.family);
        let svc = out
            .services
            .iter()
            .find(|(id, _)| *id == b.svc)
            .map(|(_, s)| *s);
        let Some(svc) = svc else { continue };
        if svc.mode != abi::MODE_NAT {
            continue;
        }
        let sport = if b.port != 0 {
            u16::from_be(b.port)
        } else {
            u16::from_be(svc.port)
        };
        let exact = back_key(addr, sport, svc.proto);
        let any = back_key(addr, 0, svc.proto);
        if ambiguous.contains(&exact) || ambiguous.contains(&any) {
            b.flags |= abi::BF_REV;
        }
    }
    for (slot, _) in &r.backends {
        if !out.backends.iter().any(|(s, _)| s == slot) {
            out.drop_backends.push(*slot);
        }
    }
    for (id, _) in &r.services {
        if !out.services.iter().any(|(s, _)| s == id) {
            out.drop_services.push(*id);
        }
    }
    Ok(out)
}
