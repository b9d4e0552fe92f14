//! The YAML walk of a load balancer config: every key checked, every error
//! located (FILE:LINE:COL), none silently dropped.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
};

use marked_yaml::Node;

use super::*;
use crate::{
    fw::policy::parser::{node_pos, pos},
    yaml::Walker,
};

pub(super) struct Parser {
    w: Walker,
}

impl std::ops::Deref for Parser {
    type Target = Walker;
    fn deref(&self) -> &Walker {
        &self.w
    }
}

impl std::ops::DerefMut for Parser {
    fn deref_mut(&mut self) -> &mut Walker {
        &mut self.w
    }
}

type At = (usize, usize);

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 31
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Parser {
    pub(super) fn new(path: &Path) -> Parser {
        Parser {
            w: Walker::new(path),
        }
    }

    pub(super) fn config(&mut self, text: &str) -> Option<LbConfig> {
        let root = self.root(
            text,
            "the config must be a mapping (interfaces, maglev, conntrack, services)",
        )?;
        let map = root.as_mapping()?;
        let Some((first, _)) = map.iter().next() else {
            self.err(
                (1, 1),
                "the config is empty; a load balancer needs `services:` (an empty or cut-short file must not pass for one)",
            );
            return None;
        };
        if pos(first.span()).1 != 1 {
            self.err(
                pos(first.span()),
                "top-level keys must start in column 1 (this one is indented)",
            );
            return None;
        }
        let mut cfg = LbConfig {
            source: self.file.clone(),
            interfaces: Vec::new(),
            table: maglev::DEFAULT_TABLE,
            ct_max: DEFAULT_CT_MAX,
            udp_idle_s: DEFAULT_UDP_IDLE_S,
            tcp_idle_s: DEFAULT_TCP_IDLE_S,
            services: Vec::new(),
        };
        let mut table_at = None;
        let mut services = None;
        for (k, v) in map.iter() {
            match k.as_str() {
                "interfaces" => {
                    for n in self.list(v) {
                        if let Some(s) = self.scalar(n, "an interface name") {
                            if s.is_empty() || s.len() > 15 || s.contains('/') || s.contains(' ') {
                                self.err(
                                    node_pos(n),
                                    format!("{s:?} is not a valid interface name"),
                                );
                            } else {
                                cfg.interfaces.push(s.to_string());
                            }
                        }
                    }
                }
                "maglev" => {
                    let Some(m) = self.mapping(v, "maglev") else {
                        continue;
                    };
                    for (mk, mv) in m.iter() {
                        match mk.as_str() {
                            "table" => {
                                table_at = Some(node_pos(mv));
                                if let Some(t) =
                                    self.number(mv, "a table size", 3, maglev::MAX_TABLE as u64)
                                {
                                    if maglev::is_prime(t as u32) {
                                        cfg.table = t as u32;
                                    } else {
                                        self.err(node_pos(mv), format!("maglev table size {t} is not prime (e.g. 65537, 131071, 1000003)"));
                                    }
                                }
                            }
                            other => self.err(
                                pos(mk.span()),
                                format!("unknown key {other:?} in maglev (expected table)"),
                            ),
                        }
                    }
                }
                "conntrack" => {
                    let Some(m) = self.mapping(v, "conntrack") else {
                        continue;
                    };
                    for (ck, cv) in m.iter() {
                        match ck.as_str() {
                            "max" => {
                                if let Some(n) = self.number(cv, "a connection table size", 1024, 1 << 26) {
                                    cfg.ct_max = n as u32;
                                }
                            }
                            "udp_idle" => {
                                if let Some(ms) = self.duration_ms(cv, 1000, 86_400_000) {
                                    cfg.udp_idle_s = ms.div_ceil(1000);
                                }
                            }
                            "tcp_idle" => {
                                if let Some(ms) = self.duration_ms(cv, 1000, 30 * 86_400_000) {
                                    cfg.tcp_idle_s = ms.div_ceil(1000);
                                }
                            }
                            other => self.err(pos(ck.span()), format!("unknown key {other:?} in conntrack (expected max, udp_idle, tcp_idle)")),
                        }
                    }
                }
                "services" => services = Some(v),
                other => self.err(
                    pos(k.span()),
                    format!(
                        "unknown key {other:?} (expected interfaces, maglev, conntrack, services)"
                    ),
                ),
            }
        }
        let Some(sn) = services else {
            if self.total == 0 {
                self.err((1, 1), "the config has no `services:` key; write `services: []` to balance nothing (a file cut short must not pass for one)");
            }
            return None;
        };
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut fronts: HashMap<(IpAddr, Option<u16>, u8), usize> = HashMap::new();
        match sn {
            Node::Sequence(seq) => {
                for s in seq.iter() {
                    if let Some(svc) = self.service(s, &mut names, &mut fronts) {
                        cfg.services.push(svc);
                    }
                }
            }
            Node::Scalar(s) if s.as_str().is_empty() => {}
            _ => self.err(node_pos(sn), "services must be a list of services"),
        }
        if cfg.services.len() > abi::MAX_SERVICES as usize {
            self.err(
                node_pos(sn),
                format!(
                    "{} services; at most {} are supported",
                    cfg.services.len(),
                    abi::MAX_SERVICES
                ),
            );
        }
        let total_backends: usize = cfg.services.iter().map(|s| s.backends.len()).sum();
        if total_backends > abi::MAX_BACKENDS as usize {
            self.err(
                node_pos(sn),
                format!(
                    "{total_backends} backends in all; at most {} are supported",
                    abi::MAX_BACKENDS
                ),
            );
        }
        // The table must give every backend enough slots to keep shares and
        // disruption fair.
        if let Some(s) = cfg.services.iter().max_by_key(|s| s.backends.len()) {
            let need = s.backends.len() as u64 * SLOTS_PER_BACKEND as u64;
            if need > cfg.table as u64 {
                self.err(
                    table_at.unwrap_or((s.line, 1)),
                    format!(
                        "maglev table {} is too small for service {:?} with {} backends: it needs at least {need} slots ({SLOTS_PER_BACKEND} per backend); pick a prime such as {}",
                        cfg.table,
                        s.name,
                        s.backends.len(),
                        next_prime(need as u32)
                    ),
                );
            }
        }
        Some(cfg)
    }

    fn service(
        &mut self,
        n: &Node,
        names: &mut HashMap<String, usize>,
        fronts: &mut HashMap<(IpAddr, Option<u16>, u8), usize>,
    ) -> Option<Service> {
        let at = node_pos(n);
        let m = self.mapping(n, "a service")?;
        let errors_before = self.total;
        let mut name = None;
        let mut vip: Option<(IpAddr, At)> = None;
        let mut port = None;
        let mut proto = None;
        let mut mode = Mode::Nat;
        let mut mode_at = at;
        let mut hash = HASH_DEFAULT;
        let mut backends = Vec::new();
        let mut backends_node = None;
        let mut health = None;
        for (k, v) in m.iter() {
            match k.as_str() {
                "name" => {
                    if let Some(s) = self.scalar(v, "a service name") {
                        if !valid_name(s) {
                            self.err(node_pos(v), format!("{s:?} is not a valid service name (1-31 of a-z, 0-9, - and _)"));
                        } else if let Some(l) = names.get(s) {
                            self.err(node_pos(v), format!("service name {s:?} is already used on line {l}"));
                        } else {
                            names.insert(s.to_string(), at.0);
                            name = Some(s.to_string());
                        }
                    }
                }
                "vip" => {
                    if let Some(s) = self.scalar(v, "an IPv4 or IPv6 address") {
                        match s.parse::<IpAddr>() {
                            Ok(a) if usable(a) => vip = Some((a, node_pos(v))),
                            Ok(a) => self.err(node_pos(v), format!("{a} cannot be a VIP (unspecified, loopback, multicast or broadcast)")),
                            Err(_) => self.err(node_pos(v), format!("{s:?} is not an IPv4 or IPv6 address")),
                        }
                    }
                }
                "port" => port = self.number(v, "a port", 1, 65535).map(|p| p as u16),
                "proto" => match self.scalar(v, "tcp or udp") {
                    Some("tcp") => proto = Some(6),
                    Some("udp") => proto = Some(17),
                    Some(o) => self.err(node_pos(v), format!("{o:?} is not a protocol the balancer takes (tcp or udp)")),
                    None => {}
                },
                "mode" => {
                    mode_at = node_pos(v);
                    match self.scalar(v, "nat or dsr") {
                        Some("nat") => mode = Mode::Nat,
                        Some("dsr") => mode = Mode::Dsr,
                        Some(o) => self.err(node_pos(v), format!("{o:?} is not a mode (nat or dsr)")),
                        None => {}
                    }
                }
                "hash" => {
                    let mut bits = 0u8;
                    for f in self.list(v) {
                        let Some(s) = self.scalar(f, "a field name") else { continue };
                        match HASH_FIELDS.iter().find(|(n, _)| *n == s) {
                            Some((_, b)) if bits & b != 0 => self.err(node_pos(f), format!("{s:?} is listed twice")),
                            Some((_, b)) => bits |= b,
                            None => self.err(node_pos(f), format!("{s:?} is not a hash field (src, sport, dst, dport, proto)")),
                        }
                    }
                    if bits == 0 {
                        self.err(node_pos(v), "hash needs at least one field (src, sport, dst, dport, proto)");
                    }
                    hash = bits;
                }
                "backends" => backends_node = Some(v),
                "health" => health = self.health(v),
                other => self.err(
                    pos(k.span()),
                    format!("unknown key {other:?} in a service (expected name, vip, port, proto, mode, hash, backends, health)"),
                ),
            }
        }
        if name.is_none() && !m.iter().any(|(k, _)| k.as_str() == "name") {
            self.err(at, "a service needs a name");
        }
        if vip.is_none() && !m.iter().any(|(k, _)| k.as_str() == "vip") {
            self.err(at, "a service needs a vip");
        }
        if proto.is_none() && !m.iter().any(|(k, _)| k.as_str() == "proto") {
            self.err(at, "a service needs proto: tcp or udp");
        }
        let family = vip.map(|(a, _)| a.is_ipv4());
        if let Some(bn) = backends_node {
            let mut seen: HashSet<BackendId> = HashSet::new();
            match bn {
                Node::Sequence(seq) => {
                    for b in seq.iter() {
                        if let Some(be) = self.backend(b, mode, family) {
                            if !seen.insert(be.id()) {
                                self.err(
                                    node_pos(b),
                                    format!("backend {} is listed twice", be.id()),
                                );
                            } else {
                                backends.push(be);
                            }
                        }
                    }
                }
                _ => self.err(node_pos(bn), "backends must be a list"),
            }
            if backends.is_empty() && matches!(bn, Node::Sequence(s) if s.is_empty()) {
                self.err(node_pos(bn), "a service needs at least one backend");
            }
        } else {
            self.err(at, "a service needs backends");
        }
        if mode == Mode::Dsr && backends.iter().any(|b| b.port.is_some()) {
            self.err(mode_at, "mode dsr cannot remap ports (backends answer the client directly, from the VIP's port): drop the backend ports or use nat");
        }
        if let (Some((a, vat)), Some(p)) = (vip, proto) {
            let key = (a, port, p);
            if let Some(l) = fronts.get(&key) {
                self.err(
                    vat,
                    format!(
                        "{a} port {} {} is already a service on line {l}",
                        port.map_or("*".into(), |p| p.to_string()),
                        proto_name(p)
                    ),
                );
            }
            fronts.insert(key, at.0);
            // An any-port service and a one-port service on the same VIP
            // are fine (the one-port service wins its port).
        }
        if self.total != errors_before {
            return None;
        }
        Some(Service {
            name: name?,
            vip: vip?.0,
            port,
            proto: proto?,
            mode,
            hash,
            backends,
            reset_on_down: health.as_ref().is_some_and(|h| h.reset_on_down),
            health,
            line: at.0,
        })
    }

    fn backend(&mut self, n: &Node, mode: Mode, v4: Option<bool>) -> Option<Backend> {
        let at = node_pos(n);
        let mut addr = None;
        let mut port = None;
        let mut weight = 1u32;
        let mut addr_at = at;
        match n {
            Node::Scalar(s) => {
                addr_at = at;
                addr = self.address(s.as_str(), at);
            }
            Node::Mapping(m) => {
                for (k, v) in m.iter() {
                    match k.as_str() {
                        "address" => {
                            addr_at = node_pos(v);
                            if let Some(s) = self.scalar(v, "an address") {
                                addr = self.address(s, node_pos(v));
                            }
                        }
                        "port" => port = self.number(v, "a port", 1, 65535).map(|p| p as u16),
                        "weight" => {
                            weight = self.number(v, "a weight", 0, MAX_WEIGHT as u64).map_or(1, |w| w as u32)
                        }
                        other => self.err(pos(k.span()), format!("unknown key {other:?} in a backend (expected address, port, weight)")),
                    }
                }
                if !m.iter().any(|(k, _)| k.as_str() == "address") {
                    self.err(at, "a backend needs an address");
                }
            }
            Node::Sequence(_) => {
                self.err(at, "a backend is an address or { address, port, weight }");
            }
        }
        let addr = addr?;
        if let Some(v4) = v4
            && addr.is_ipv4() != v4
        {
            self.err(
                addr_at,
                format!("backend {addr} is not of the VIP's address family"),
            );
            return None;
        }
        let _ = mode;
        Some(Backend {
            addr,
            port,
            weight,
            line: at.0,
        })
    }

    fn address(&mut self, s: &str, at: At) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Ok(a) if usable(a) => Some(a),
            Ok(a) => {
                self.err(
                    at,
                    format!(
                        "{a} cannot be a backend (unspecified, loopback, multicast or broadcast)"
                    ),
                );
                None
            }
            Err(_) => {
                self.err(at, format!("{s:?} is not an IPv4 or IPv6 address"));
                None
            }
        }
    }

    fn health(&mut self, n: &Node) -> Option<Health> {
        let m = self.mapping(n, "health")?;
        let mut check = None;
        let mut h = Health {
            check: Check::Tcp { port: 0 },
            interval_ms: 1000,
            timeout_ms: 1000,
            fall: 3,
            rise: 2,
            reset_on_down: false,
        };
        let before = self.total;
        for (k, v) in m.iter() {
            match k.as_str() {
                "tcp" => check = self.number(v, "a port", 1, 65535).map(|p| Check::Tcp { port: p as u16 }),
                "http" => {
                    let Some(hm) = self.mapping(v, "http") else { continue };
                    let (mut port, mut path, mut expect) = (None, "/".to_string(), 200u16);
                    for (hk, hv) in hm.iter() {
                        match hk.as_str() {
                            "port" => port = self.number(hv, "a port", 1, 65535).map(|p| p as u16),
                            "path" => {
                                if let Some(s) = self.scalar(hv, "a path") {
                                    if !s.starts_with('/') || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
                                        self.err(node_pos(hv), format!("{s:?} is not an HTTP path (starts with /, no spaces or control characters)"));
                                    } else {
                                        path = s.to_string();
                                    }
                                }
                            }
                            "expect" => expect = self.number(hv, "an HTTP status", 100, 599).unwrap_or(200) as u16,
                            other => self.err(pos(hk.span()), format!("unknown key {other:?} in http (expected port, path, expect)")),
                        }
                    }
                    match port {
                        Some(port) => check = Some(Check::Http { port, path, expect }),
                        None if !hm.iter().any(|(k, _)| k.as_str() == "port") => self.err(node_pos(v), "an http check needs a port"),
                        None => {}
                    }
                }
                "interval" => h.interval_ms = self.duration_ms(v, 100, 3_600_000).unwrap_or(1000),
                "timeout" => h.timeout_ms = self.duration_ms(v, 10, 60_000).unwrap_or(1000),
                "fall" => h.fall = self.number(v, "a count", 1, 100).unwrap_or(3) as u32,
                "rise" => h.rise = self.number(v, "a count", 1, 100).unwrap_or(2) as u32,
                "on_down" => match self.scalar(v, "keep or reset") {
                    Some("keep") => h.reset_on_down = false,
                    Some("reset") => h.reset_on_down = true,
                    Some(other) => self.err(node_pos(v), format!("on_down {other:?}: keep (a down backend keeps its connections: drain) or reset (they are balanced again)")),
                    None => {}
                },
                other => self.err(pos(k.span()), format!("unknown key {other:?} in health (expected tcp, http, interval, timeout, fall, rise, on_down)")),
            }
        }
        if m.iter()
            .filter(|(k, _)| k.as_str() == "tcp" || k.as_str() == "http")
            .count()
            > 1
        {
            self.err(node_pos(n), "a health check is tcp or http, not both");
        }
        if check.is_none() && self.total == before {
            self.err(
                node_pos(n),
                "health needs a check: tcp: PORT or http: { port, path, expect }",
            );
        }
        if h.timeout_ms > h.interval_ms {
            self.err(
                node_pos(n),
                format!(
                    "health timeout {}ms is longer than the interval {}ms",
                    h.timeout_ms, h.interval_ms
                ),
            );
        }
        h.check = check?;
        (self.total == before).then_some(h)
    }
}

fn usable(a: IpAddr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
        && a != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

fn next_prime(n: u32) -> u32 {
    let mut p = n.max(3);
    while !maglev::is_prime(p) {
        p += 1;
    }
    p
}
