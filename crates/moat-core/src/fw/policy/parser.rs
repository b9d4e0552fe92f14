//! The YAML walk: every key checked, every error located (FILE:LINE:COL),
//! none silently dropped.

use std::{collections::HashMap, path::PathBuf};

use marked_yaml::{LoaderOptions, Node, Span, loader::LoadError};

use super::*;
use crate::fw::addr::Cidr;

pub(super) struct Parser {
    pub(super) file: PathBuf,
    pub(super) base: PathBuf,
    /// The first errors (at most MAX_ERRORS_KEPT).
    pub(super) errors: Vec<PolicyError>,
    /// Every error, kept or not.
    pub(super) total: usize,
}

/// Shortens long quoted values in a message (a hostile 10 MB value must not
/// make a 10 MB error line): each quoted run keeps its first 40 characters.
pub(crate) fn shorten(msg: String) -> String {
    const KEEP: usize = 40;
    if msg.len() <= 200 {
        return msg;
    }
    let mut out = String::new();
    for (i, part) in msg.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        let n = part.chars().count();
        if i % 2 == 1 && n > KEEP + 10 {
            out.extend(part.chars().take(KEEP));
            out.push_str(&format!("...({n} characters)"));
        } else {
            out.push_str(part);
        }
    }
    if out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "...";
    }
    out
}

pub(crate) fn pos(span: &Span) -> (usize, usize) {
    span.start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((0, 0))
}

pub(crate) fn node_pos(n: &Node) -> (usize, usize) {
    pos(n.span())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A set as parsed: its entries, or None if it had errors (reported).
type Sets = HashMap<String, Option<Vec<Cidr>>>;

impl Parser {
    fn err(&mut self, at: (usize, usize), msg: impl Into<String>) {
        let e = PolicyError {
            file: self.file.clone(),
            line: at.0,
            col: at.1,
            msg: msg.into(),
        };
        self.push(e);
    }

    fn push(&mut self, mut e: PolicyError) {
        self.total += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            e.msg = shorten(e.msg);
            self.errors.push(e);
        }
    }

    pub(super) fn policy(&mut self, text: &str) -> Option<Policy> {
        let opts = LoaderOptions::default().error_on_duplicate_keys(true);
        let root = match marked_yaml::parse_yaml_with_options(0, text, opts) {
            Ok(n) => n,
            Err(e) => {
                let (at, msg) = load_error(&e);
                self.err(at, msg);
                return None;
            }
        };
        let Some(map) = root.as_mapping() else {
            self.err(
                node_pos(&root),
                "the policy must be a mapping (interfaces, default, rules, sets)",
            );
            return None;
        };
        // An empty file (or only comments, or /dev/null) is not an allow-all
        // policy: it is more likely a truncated or lost one.
        let Some((first, _)) = map.iter().next() else {
            self.err((1, 1), EMPTY_POLICY);
            return None;
        };
        // Top-level keys start in column 1: after an indented first key, a
        // dedented line would silently end the document.
        if pos(first.span()).1 != 1 {
            self.err(
                pos(first.span()),
                "top-level keys must start in column 1 (this one is indented)",
            );
            return None;
        }
        let mut interfaces = Vec::new();
        let mut default_ingress = Action::Allow;
        let mut default_egress = Action::Allow;
        let mut rules_node = None;
        let mut sets_node = None;
        let mut timeouts = Timeouts::default();
        let mut logging = Logging::default();
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
                                interfaces.push(s.to_string());
                            }
                        }
                    }
                }
                "default" => {
                    let Some(m) = v.as_mapping() else {
                        self.err(node_pos(v), "default must be a mapping: { ingress: allow|deny, egress: allow|deny }");
                        continue;
                    };
                    for (dk, dv) in m.iter() {
                        let slot = match dk.as_str() {
                            "ingress" => &mut default_ingress,
                            "egress" => &mut default_egress,
                            other => {
                                self.err(pos(dk.span()), format!("unknown key {other:?} in default (expected ingress, egress)"));
                                continue;
                            }
                        };
                        if let Some(a) = self.action(dv) {
                            *slot = a;
                        }
                    }
                }
                "rules" => rules_node = Some(v),
                "sets" => sets_node = Some(v),
                "conntrack" => timeouts = self.timeouts(v),
                "log" => logging = self.logging(v),
                other => self.err(
                    pos(k.span()),
                    format!("unknown key {other:?} (expected interfaces, default, rules, sets, conntrack, log)"),
                ),
            }
        }
        let sets = sets_node.map(|n| self.sets(n)).unwrap_or_default();
        let mut rules = Vec::new();
        if let Some(rn) = rules_node {
            let mut names: HashMap<String, usize> = HashMap::new();
            match rn.as_sequence() {
                Some(seq) => {
                    for r in seq.iter() {
                        if let Some(rule) = self.rule(r, &sets, &mut names) {
                            rules.push(rule);
                        }
                    }
                }
                None if rn.as_scalar().is_some_and(|s| s.as_str().is_empty()) => {}
                None => self.err(node_pos(rn), "rules must be a list of rules"),
            }
        }
        if rules_node.is_none() && self.total == 0 {
            self.err(
                (1, 1),
                "the policy has no `rules:` key; write `rules: []` for a policy of defaults only (a policy cut short must not pass for one)",
            );
        }
        let set_sizes = sets
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(0, Vec::len)))
            .collect();
        Some(Policy {
            source: self.file.clone(),
            interfaces,
            default_ingress,
            default_egress,
            rules,
            sets: set_sizes,
            timeouts,
            logging,
        })
    }

    /// `log: { drops: true, rate: 1000, burst: 1000, sample: 1, flow_rate: 10000 }`
    fn logging(&mut self, n: &Node) -> Logging {
        let mut l = Logging::default();
        let Some(m) = n.as_mapping() else {
            self.err(
                node_pos(n),
                "log must be a mapping (drops, rate, burst, sample, flow_rate)",
            );
            return l;
        };
        for (k, v) in m.iter() {
            let slot = match k.as_str() {
                "drops" => {
                    if let Some(b) = self.boolean(v) {
                        l.drops = b;
                    }
                    continue;
                }
                "rate" => &mut l.rate,
                "burst" => &mut l.burst,
                "sample" => &mut l.sample,
                "flow_rate" => &mut l.flow_rate,
                other => {
                    self.err(pos(k.span()), format!("unknown key {other:?} in log (expected drops, rate, burst, sample, flow_rate)"));
                    continue;
                }
            };
            let Some(s) = self.scalar(v, "a whole number") else {
                continue;
            };
            match s.parse::<u32>() {
                Ok(x) if (1..=100_000_000).contains(&x) => *slot = x,
                _ => self.err(
                    node_pos(v),
                    format!("{s:?} is not a whole number between 1 and 100000000"),
                ),
            }
        }
        l
    }

    fn boolean(&mut self, n: &Node) -> Option<bool> {
        match self.scalar(n, "true or false")? {
            "true" => Some(true),
            "false" => Some(false),
            o => {
                self.err(node_pos(n), format!("{o:?} is not true or false"));
                None
            }
        }
    }

    /// `conntrack: { tcp_timeout: 5d, udp_timeout: 120s, other_timeout: 60 }`
    fn timeouts(&mut self, n: &Node) -> Timeouts {
        let mut t = Timeouts::default();
        let Some(m) = n.as_mapping() else {
            self.err(
                node_pos(n),
                "conntrack must be a mapping (max, tcp_timeout, tcp_<state>_timeout, udp_timeout, other_timeout)",
            );
            return t;
        };
        for (k, v) in m.iter() {
            if k.as_str() == "max" {
                let Some(s) = self.scalar(v, "a number of connections") else {
                    continue;
                };
                let (lo, hi) = super::CT_MAX_RANGE;
                match s.replace('_', "").parse::<u64>() {
                    Ok(n) if (u64::from(lo)..=u64::from(hi)).contains(&n) => t.max = Some(n as u32),
                    _ => self.err(
                        node_pos(v),
                        format!("conntrack max {s:?} is not a number of connections between {lo} and {hi}"),
                    ),
                }
                continue;
            }
            let slot = match k.as_str() {
                "tcp_timeout" => &mut t.tcp,
                "udp_timeout" => &mut t.udp,
                "other_timeout" => &mut t.other,
                "tcp_syn_sent_timeout" => &mut t.tcp_syn_sent,
                "tcp_syn_recv_timeout" => &mut t.tcp_syn_recv,
                "tcp_fin_wait_timeout" => &mut t.tcp_fin_wait,
                "tcp_close_wait_timeout" => &mut t.tcp_close_wait,
                "tcp_last_ack_timeout" => &mut t.tcp_last_ack,
                "tcp_time_wait_timeout" => &mut t.tcp_time_wait,
                "tcp_close_timeout" => &mut t.tcp_close,
                other => {
                    self.err(pos(k.span()), format!("unknown key {other:?} in conntrack (expected max, tcp_timeout, udp_timeout, other_timeout, tcp_{{syn_sent,syn_recv,fin_wait,close_wait,last_ack,time_wait,close}}_timeout)"));
                    continue;
                }
            };
            let Some(s) = self.scalar(v, "a duration such as 120, 90s, 30m, 2h or 5d") else {
                continue;
            };
            match parse_duration(s) {
                Some(secs) if (1..=31_536_000).contains(&secs) => *slot = secs as u32,
                _ => self.err(
                    node_pos(v),
                    format!(
                        "{s:?} is not a duration between 1s and 365d (e.g. 120, 90s, 30m, 2h, 5d)"
                    ),
                ),
            }
        }
        t
    }

    /// A scalar or a list of scalars, as a list of nodes.
    fn list<'a>(&mut self, n: &'a Node) -> Vec<&'a Node> {
        match n {
            Node::Sequence(s) => s.iter().collect(),
            Node::Scalar(_) => vec![n],
            Node::Mapping(_) => {
                self.err(node_pos(n), "expected a value or a list, found a mapping");
                vec![]
            }
        }
    }

    fn scalar<'a>(&mut self, n: &'a Node, what: &str) -> Option<&'a str> {
        match n.as_scalar() {
            Some(s) => Some(s.as_str()),
            None => {
                self.err(node_pos(n), format!("expected {what}"));
                None
            }
        }
    }

    fn action(&mut self, n: &Node) -> Option<Action> {
        match self.scalar(n, "allow or deny")? {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                self.err(
                    node_pos(n),
                    format!("{other:?} is not an action (expected allow or deny)"),
                );
                None
            }
        }
    }

    fn sets(&mut self, n: &Node) -> Sets {
        let mut out = Sets::new();
        let Some(m) = n.as_mapping() else {
            self.err(node_pos(n), "sets must be a mapping of name to addresses");
            return out;
        };
        for (k, v) in m.iter() {
            let name = k.as_str().to_string();
            if !valid_name(&name) {
                self.err(
                    pos(k.span()),
                    format!("set name {name:?} must match [a-z0-9_-]+"),
                );
            }
            let entries = match v {
                Node::Mapping(fm) => {
                    let mut file = None;
                    for (fk, fv) in fm.iter() {
                        if fk.as_str() == "file" {
                            file = Some(fv);
                        } else {
                            self.err(
                                pos(fk.span()),
                                format!(
                                    "unknown key {:?} in set {name} (expected file)",
                                    fk.as_str()
                                ),
                            );
                        }
                    }
                    match file {
                        Some(f) => self.set_file(f),
                        None => {
                            self.err(
                                node_pos(v),
                                format!(
                                    "set {name}: expected a list of addresses or {{ file: PATH }}"
                                ),
                            );
                            None
                        }
                    }
                }
                _ => {
                    let before = self.total;
                    let mut cidrs = Vec::new();
                    for e in self.list(v) {
                        if let Some(s) = self.scalar(e, "an address or CIDR") {
                            if s.starts_with('@') {
                                self.err(node_pos(e), "sets cannot refer to other sets");
                                continue;
                            }
                            match Cidr::parse(s) {
                                Ok(c) => cidrs.push(c),
                                Err(msg) => self.err(node_pos(e), msg),
                            }
                        }
                    }
                    (self.total == before).then_some(cidrs)
                }
            };
            out.insert(name, entries);
        }
        out
    }

    fn set_file(&mut self, f: &Node) -> Option<Vec<Cidr>> {
        let rel = self.scalar(f, "a file path")?;
        let path = self.base.join(rel);
        let what = format!("set file {}", path.display());
        let text = match read_text(&path, &what, MAX_SET_FILE_BYTES) {
            Ok(t) => t,
            Err((0, _, msg)) => {
                self.err(node_pos(f), msg);
                return None;
            }
            Err((line, col, msg)) => {
                self.push(PolicyError {
                    file: path.clone(),
                    line,
                    col,
                    msg,
                });
                return None;
            }
        };
        let mut out = Vec::new();
        let mut bad = 0usize;
        for (i, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("");
            let trimmed = content.trim();
            if trimmed.is_empty() {
                continue;
            }
            match Cidr::parse(trimmed) {
                Ok(c) => out.push(c),
                Err(msg) => {
                    bad += 1;
                    if bad <= 20 {
                        let col = content.len() - content.trim_start().len() + 1;
                        self.push(PolicyError {
                            file: path.clone(),
                            line: i + 1,
                            col,
                            msg,
                        });
                    }
                }
            }
        }
        if bad > 20 {
            self.push(PolicyError {
                file: path.clone(),
                line: 0,
                col: 0,
                msg: format!("{} more bad lines not shown", bad - 20),
            });
        }
        (bad == 0).then_some(out)
    }

    fn addresses(&mut self, n: &Node, sets: &Sets, what: &str) -> Option<Vec<Cidr>> {
        let before = self.total;
        let mut out = Vec::new();
        for e in self.list(n) {
            let Some(s) = self.scalar(e, "an address, CIDR or @set") else {
                continue;
            };
            if let Some(set) = s.strip_prefix('@') {
                match sets.get(set) {
                    Some(Some(c)) => out.extend_from_slice(c),
                    Some(None) => {} // already reported
                    None => self.err(node_pos(e), format!("unknown set @{set} in {what}")),
                }
            } else {
                match Cidr::parse(s) {
                    Ok(c) => out.push(c),
                    Err(msg) => self.err(node_pos(e), msg),
                }
            }
        }
        (self.total == before).then_some(out)
    }

    fn rule(&mut self, n: &Node, sets: &Sets, names: &mut HashMap<String, usize>) -> Option<Rule> {
        let Some(m) = n.as_mapping() else {
            self.err(
                node_pos(n),
                "a rule must be a mapping (name, direction, action, ...)",
            );
            return None;
        };
        let at = node_pos(n);
        let before = self.total;
        let (mut name, mut direction, mut action) = (None, None, None);
        let (mut remote, mut except) = (None, Vec::new());
        let mut protos = vec![Proto::Any];
        let mut ports_node = None;
        let mut types_node = None;
        let mut log = false;
        for (k, v) in m.iter() {
            match k.as_str() {
                "name" => {
                    if let Some(s) = self.scalar(v, "a rule name") {
                        if !valid_name(s) {
                            self.err(node_pos(v), format!("rule name {s:?} must match [a-z0-9_-]+"));
                        } else if let Some(line) = names.get(s) {
                            self.err(node_pos(v), format!("duplicate rule name {s:?} (first used on line {line})"));
                        } else {
                            names.insert(s.to_string(), node_pos(v).0);
                            name = Some(s.to_string());
                        }
                    }
                }
                "direction" => match self.scalar(v, "ingress or egress") {
                    Some("ingress") => direction = Some(Dir::Ingress),
                    Some("egress") => direction = Some(Dir::Egress),
                    Some(o) => self.err(node_pos(v), format!("{o:?} is not a direction (expected ingress or egress)")),
                    None => {}
                },
                "action" => action = self.action(v),
                "remote" => remote = self.addresses(v, sets, "remote"),
                "except" => except = self.addresses(v, sets, "except").unwrap_or_default(),
                "proto" => {
                    let mut ps = Vec::new();
                    for e in self.list(v) {
                        match self.scalar(e, "a protocol") {
                            Some("tcp") => ps.push(Proto::Tcp),
                            Some("udp") => ps.push(Proto::Udp),
                            Some("icmp") => ps.push(Proto::Icmp),
                            Some("icmpv6") => ps.push(Proto::Icmpv6),
                            Some("any") => ps.push(Proto::Any),
                            Some(o) => self.err(node_pos(e), format!("{o:?} is not a protocol (expected tcp, udp, icmp, icmpv6, any)")),
                            None => {}
                        }
                    }
                    if ps.is_empty() {
                        self.err(node_pos(v), "proto must name at least one protocol");
                    } else if ps.contains(&Proto::Any) {
                        protos = vec![Proto::Any];
                    } else {
                        ps.sort();
                        ps.dedup();
                        protos = ps;
                    }
                }
                "ports" => ports_node = Some(v),
                "icmp_types" => types_node = Some(v),
                "log" => log = self.boolean(v).unwrap_or(false),
                other => self.err(
                    pos(k.span()),
                    format!("unknown key {other:?} in rule (expected name, direction, action, remote, except, proto, ports, icmp_types, log)"),
                ),
            }
        }
        if name.is_none() && !m.iter().any(|(k, _)| k.as_str() == "name") {
            self.err(at, "rule has no name");
        }
        if direction.is_none() && !m.iter().any(|(k, _)| k.as_str() == "direction") {
            self.err(at, "rule has no direction (ingress or egress)");
        }
        if action.is_none() && !m.iter().any(|(k, _)| k.as_str() == "action") {
            self.err(at, "rule has no action (allow or deny)");
        }
        let any = protos == [Proto::Any];
        let has_l4 = any || protos.iter().any(|p| matches!(p, Proto::Tcp | Proto::Udp));
        let has_icmp = any
            || protos
                .iter()
                .any(|p| matches!(p, Proto::Icmp | Proto::Icmpv6));
        let ports = ports_node.and_then(|v| {
            if !has_l4 {
                let at = node_pos(v);
                self.err(
                    at,
                    "ports apply to tcp and udp only; this rule's proto has neither",
                );
                return None;
            }
            if protos
                .iter()
                .any(|p| matches!(p, Proto::Icmp | Proto::Icmpv6))
            {
                self.err(
                    node_pos(v),
                    "ports with icmp/icmpv6 in proto: split the rule (ports are tcp/udp only)",
                );
                return None;
            }
            self.ports(v)
        });
        let icmp_types = types_node.and_then(|v| {
            if !has_icmp {
                self.err(
                    node_pos(v),
                    "icmp_types apply to icmp and icmpv6 only; this rule's proto has neither",
                );
                return None;
            }
            if protos.iter().any(|p| matches!(p, Proto::Tcp | Proto::Udp)) {
                self.err(
                    node_pos(v),
                    "icmp_types with tcp/udp in proto: split the rule",
                );
                return None;
            }
            if ports_node.is_some() {
                self.err(node_pos(v), "a rule cannot have both ports and icmp_types");
                return None;
            }
            self.icmp_types(v)
        });
        if any && ports_node.is_some() {
            // proto any + ports means tcp and udp on those ports.
            protos = vec![Proto::Tcp, Proto::Udp];
        } else if any && types_node.is_some() {
            protos = vec![Proto::Icmp, Proto::Icmpv6];
        }
        if self.total != before {
            return None;
        }
        Some(Rule {
            name: name?,
            direction: direction?,
            action: action?,
            remote,
            except,
            protos,
            ports,
            icmp_types,
            log,
            line: at.0,
        })
    }

    fn ports(&mut self, v: &Node) -> Option<Vec<(u16, u16)>> {
        let before = self.total;
        let mut out = Vec::new();
        for e in self.list(v) {
            let Some(s) = self.scalar(e, "a port or a range \"LO-HI\"") else {
                continue;
            };
            let parse = |t: &str| -> Result<u16, String> {
                match t.trim().parse::<u64>() {
                    Ok(0) => Err("port 0 is not a valid port (ports are 1-65535)".into()),
                    Ok(n) if n > 65535 => {
                        Err(format!("port {n} is out of range (ports are 1-65535)"))
                    }
                    Ok(n) => Ok(n as u16),
                    Err(_) => Err(format!("{t:?} is not a port number")),
                }
            };
            let r = match s.split_once('-') {
                Some((a, b)) => parse(a).and_then(|lo| {
                    parse(b).and_then(|hi| {
                        if lo > hi {
                            Err(format!(
                                "inverted port range {s:?} (low end above high end)"
                            ))
                        } else {
                            Ok((lo, hi))
                        }
                    })
                }),
                None => parse(s).map(|p| (p, p)),
            };
            match r {
                Ok(r) => out.push(r),
                Err(msg) => self.err(node_pos(e), msg),
            }
        }
        if out.is_empty() && self.total == before {
            self.err(node_pos(v), "ports is empty: omit it to mean all ports");
        }
        (self.total == before).then_some(out)
    }

    fn icmp_types(&mut self, v: &Node) -> Option<Vec<IcmpType>> {
        let before = self.total;
        let mut out = Vec::new();
        for e in self.list(v) {
            let Some(s) = self.scalar(e, "an ICMP type name or number") else {
                continue;
            };
            if let Ok(n) = s.parse::<u64>() {
                if n > 255 {
                    self.err(
                        node_pos(e),
                        format!("ICMP type {n} is out of range (0-255)"),
                    );
                } else {
                    out.push(IcmpType::Number(n as u8));
                }
            } else if let Some((_, v4, v6)) = ICMP_NAMES.iter().find(|(n, _, _)| *n == s) {
                out.push(IcmpType::Named { v4: *v4, v6: *v6 });
            } else {
                let names: Vec<&str> = ICMP_NAMES.iter().map(|(n, _, _)| *n).collect();
                self.err(
                    node_pos(e),
                    format!(
                        "unknown ICMP type {s:?} (use a number or one of: {})",
                        names.join(", ")
                    ),
                );
            }
        }
        if out.is_empty() && self.total == before {
            self.err(
                node_pos(v),
                "icmp_types is empty: omit it to mean all types",
            );
        }
        (self.total == before).then_some(out)
    }
}

/// Seconds in `120`, `90s`, `30m`, `2h`, `5d`.
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

pub(crate) fn load_error(e: &LoadError) -> ((usize, usize), String) {
    let m = |mk: &marked_yaml::Marker| (mk.line(), mk.column());
    match e {
        LoadError::TopLevelMustBeMapping(mk) => (
            m(mk),
            "the policy must be a mapping (interfaces, default, rules, sets)".into(),
        ),
        LoadError::DuplicateKey(inner) => {
            let prev = pos(inner.prev_key.span());
            (
                pos(inner.key.span()),
                format!(
                    "duplicate key {:?} (first on line {})",
                    inner.key.as_str(),
                    prev.0
                ),
            )
        }
        LoadError::ScanError(mk, se) => (m(mk), format!("YAML syntax error: {se}")),
        LoadError::UnexpectedAnchor(mk) => (m(mk), "YAML anchors are not supported".into()),
        LoadError::UnexpectedTag(mk) => (m(mk), "YAML tags are not supported".into()),
        LoadError::MappingKeyMustBeScalar(mk) => {
            (m(mk), "mapping keys must be plain values".into())
        }
        other => ((0, 0), other.to_string()),
    }
}
