//! The policy compiler: rules in, logical map entries out (prefix -> class,
//! {class, dir, proto, port prefix} -> verdict), so that a packet costs a
//! bounded number of lookups whatever the number of rules. Which kernel map
//! each entry lands in (hash or trie) is [`super::encode`]'s business.
//!
//! 1. **Address classes.** Every prefix named by a rule (remote or except) is
//!    an entry of an LPM trie. An address's longest match is prefix `p`; the
//!    prefixes containing the address are then exactly `p` and its ancestors,
//!    so the rules selecting it are those with a remote prefix among them and
//!    no except prefix among them. Each distinct rule set becomes one class id
//!    (class 0: no rule). A million-address blocklist in one rule is one class.
//! 2. **Verdicts.** For each class, direction and protocol, the 16-bit port
//!    space (tcp/udp destination port, icmp `type << 8 | code`) is cut into
//!    segments with one winning rule each (deny beats allow, the first rule in
//!    file order decides), and each segment becomes a few prefixes of an LPM
//!    trie keyed by {class, direction, protocol, port}. Ports with the
//!    default verdict get no entry: a miss means the default.

use std::collections::{BTreeSet, HashMap};

use super::{
    Decision, Flow,
    addr::Cidr,
    policy::{Action, Dir, Policy, Proto},
};

/// Protocol keys of the verdict trie; any other protocol uses [`PROTO_OTHER`].
pub const PROTO_KEYS: [u8; 5] = [6, 17, 1, 58, PROTO_OTHER];
pub const PROTO_OTHER: u8 = 255;

/// One entry of the verdict trie: ports `port .. port + 2^(16-plen) - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictEntry {
    pub class: u32,
    pub dir: Dir,
    pub proto: u8,
    pub port: u16,
    /// Bits of `port` that must match (0..=16).
    pub plen: u8,
    pub action: Action,
    /// Index into `Policy::rules`.
    pub rule: usize,
}

/// A compiled policy: exactly the entries the maps receive.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Prefix -> class, for the IPv4 and IPv6 tries.
    pub addr4: Vec<(Cidr, u32)>,
    pub addr6: Vec<(Cidr, u32)>,
    /// Class id -> the rule indices selecting its addresses (class 0: none).
    pub classes: Vec<Vec<u32>>,
    pub verdicts: Vec<VerdictEntry>,
}

/// Bytes the kernel needs per LPM entry beyond key and value (trie node,
/// slab rounding, up to one intermediate node): an estimate for `fw check`.
const LPM_OVERHEAD: usize = 96;

impl Compiled {
    /// Estimated kernel memory for the policy maps, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.addr4.len() * ADDR4_BYTES
            + self.addr6.len() * ADDR6_BYTES
            + self.verdicts.len() * VERDICT_BYTES
    }

    /// The decision the maps encode for `flow`, found the way the kernel
    /// finds it (longest prefix match), by scanning. For tests.
    pub fn lookup(&self, policy: &Policy, flow: &Flow) -> Decision {
        let table = if flow.remote.is_ipv4() {
            &self.addr4
        } else {
            &self.addr6
        };
        let class = table
            .iter()
            .filter(|(c, _)| c.contains(flow.remote))
            .max_by_key(|(c, _)| c.prefix_len())
            .map_or(0, |(_, k)| *k);
        let proto = if PROTO_KEYS[..4].contains(&flow.proto) {
            flow.proto
        } else {
            PROTO_OTHER
        };
        let hit = self
            .verdicts
            .iter()
            .filter(|v| v.class == class && v.dir == flow.dir && v.proto == proto)
            .filter(|v| port_matches(v.port, v.plen, flow.port))
            .max_by_key(|v| v.plen);
        match hit {
            Some(v) => Decision {
                action: v.action,
                rule: Some(v.rule),
            },
            None => Decision {
                action: policy.default_for(flow.dir),
                rule: None,
            },
        }
    }
}

fn port_matches(prefix: u16, plen: u8, port: u16) -> bool {
    let mask = if plen == 0 {
        0
    } else {
        u16::MAX << (16 - plen)
    };
    port & mask == prefix
}

/// Progress callback: (phase, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Compiles `policy` into map entries.
pub fn compile(policy: &Policy) -> Compiled {
    compile_with_progress(policy, &mut |_, _, _| {})
}

pub fn compile_with_progress(policy: &Policy, progress: Progress<'_>) -> Compiled {
    match compile_within(policy, usize::MAX, progress) {
        Ok(c) => c,
        Err(_) => unreachable!("no budget is smaller than usize::MAX bytes"),
    }
}

/// Bytes per verdict entry and per address entry, as [`Compiled::memory_bytes`] counts them.
const VERDICT_BYTES: usize = 12 + 8 + LPM_OVERHEAD;
const ADDR4_BYTES: usize = 8 + 4 + LPM_OVERHEAD;
const ADDR6_BYTES: usize = 20 + 4 + LPM_OVERHEAD;

/// A policy whose compiled form would not fit the memory budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub budget: usize,
    /// Estimated kernel memory and entries of the whole compiled policy
    /// (extrapolated from the classes compiled before the budget ran out).
    pub need: usize,
    pub entries: usize,
    pub classes: usize,
    pub classes_compiled: usize,
    /// (rule index, verdict entries it decides, address classes they span)
    /// in the classes compiled, most entries first.
    pub by_rule: Vec<(usize, usize, usize)>,
}

/// Compiles `policy` unless its maps would need more than `budget` bytes of
/// kernel memory; compiling stops as soon as the budget is exceeded.
pub fn compile_within(
    policy: &Policy,
    budget: usize,
    progress: Progress<'_>,
) -> Result<Compiled, OverBudget> {
    let mut interner: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut classes: Vec<Vec<u32>> = vec![Vec::new()];
    interner.insert(Vec::new(), 0);
    let addr4 = address_classes(policy, true, &mut interner, &mut classes, progress);
    let addr6 = address_classes(policy, false, &mut interner, &mut classes, progress);
    let mut need = addr4.len() * ADDR4_BYTES + addr6.len() * ADDR6_BYTES;
    let mut verdicts = Vec::new();
    let total = classes.len();
    for (class, rules) in classes.iter().enumerate() {
        if rules.is_empty() {
            continue;
        }
        let start = verdicts.len();
        for dir in [Dir::Ingress, Dir::Egress] {
            for proto in PROTO_KEYS {
                segments(policy, class as u32, rules, dir, proto, &mut verdicts);
            }
        }
        need = need.saturating_add((verdicts.len() - start) * VERDICT_BYTES);
        if need > budget {
            // Stop here (a policy of gigabytes costs no more than the budget
            // to refuse): attribute what was built, extrapolate the rest.
            let mut m: HashMap<usize, (usize, usize)> = HashMap::new();
            let mut last: HashMap<usize, u32> = HashMap::new();
            for v in &verdicts {
                let e = m.entry(v.rule).or_default();
                e.0 += 1;
                if last.insert(v.rule, v.class) != Some(v.class) {
                    e.1 += 1;
                }
            }
            let mut by_rule: Vec<(usize, usize, usize)> =
                m.into_iter().map(|(r, (n, k))| (r, n, k)).collect();
            by_rule.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let done = class + 1;
            let scale = |x: usize| (x as f64 * total as f64 / done as f64) as usize;
            let addr = addr4.len() + addr6.len();
            return Err(OverBudget {
                budget,
                need: addr4.len() * ADDR4_BYTES
                    + addr6.len() * ADDR6_BYTES
                    + scale(verdicts.len() * VERDICT_BYTES),
                entries: addr + scale(verdicts.len()),
                classes: total,
                classes_compiled: done,
                by_rule,
            });
        }
        if class.is_multiple_of(4096) {
            progress("verdicts", class, total);
        }
    }
    Ok(Compiled {
        addr4,
        addr6,
        classes,
        verdicts,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Remote,
    Except,
}

fn address_classes(
    policy: &Policy,
    v4: bool,
    interner: &mut HashMap<Vec<u32>, u32>,
    classes: &mut Vec<Vec<u32>>,
    progress: Progress<'_>,
) -> Vec<(Cidr, u32)> {
    let any = if v4 { Cidr::any_v4() } else { Cidr::any_v6() };
    let mut items: Vec<(Cidr, Kind, u32)> = Vec::new();
    for (i, r) in policy.rules.iter().enumerate() {
        match &r.remote {
            None => items.push((any, Kind::Remote, i as u32)),
            Some(list) => items.extend(
                list.iter()
                    .filter(|c| c.is_v4() == v4)
                    .map(|c| (*c, Kind::Remote, i as u32)),
            ),
        }
        items.extend(
            r.except
                .iter()
                .filter(|c| c.is_v4() == v4)
                .map(|c| (*c, Kind::Except, i as u32)),
        );
    }
    items.sort_unstable();
    items.dedup();
    let total = items.len();
    let phase = if v4 {
        "ipv4 address classes"
    } else {
        "ipv6 address classes"
    };

    // Stack of ancestors: (prefix, cumulative remote rules, cumulative except rules).
    let mut stack: Vec<(Cidr, Vec<u32>, Vec<u32>)> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let p = items[i].0;
        let mut here_remote = Vec::new();
        let mut here_except = Vec::new();
        while i < items.len() && items[i].0 == p {
            match items[i].1 {
                Kind::Remote => here_remote.push(items[i].2),
                Kind::Except => here_except.push(items[i].2),
            }
            i += 1;
        }
        while let Some((top, _, _)) = stack.last() {
            if top.covers(&p) {
                break;
            }
            stack.pop();
        }
        let (mut remote, mut except) = match stack.last() {
            Some((_, r, e)) => (r.clone(), e.clone()),
            None => (Vec::new(), Vec::new()),
        };
        merge(&mut remote, &here_remote);
        merge(&mut except, &here_except);
        let effective: Vec<u32> = remote
            .iter()
            .copied()
            .filter(|r| except.binary_search(r).is_err())
            .collect();
        let next = classes.len() as u32;
        let class = *interner.entry(effective.clone()).or_insert_with(|| {
            classes.push(effective);
            next
        });
        out.push((p, class));
        stack.push((p, remote, except));
        if out.len().is_multiple_of(65536) {
            progress(phase, i, total);
        }
    }
    progress(phase, total, total);
    out
}

/// Merges sorted unique `add` into sorted unique `into`.
fn merge(into: &mut Vec<u32>, add: &[u32]) {
    if add.is_empty() {
        return;
    }
    into.extend_from_slice(add);
    into.sort_unstable();
    into.dedup();
}

/// Port intervals a rule covers for protocol key `proto`, or None if the
/// rule does not apply to that protocol.
fn intervals(rule: &super::Rule, proto: u8) -> Option<Vec<(u32, u32)>> {
    let applies = rule.protos.iter().any(|p| match p {
        Proto::Any => true,
        p => p.number() == Some(proto),
    });
    if !applies {
        return None;
    }
    if let Some(ports) = &rule.ports {
        if proto != 6 && proto != 17 {
            return None;
        }
        return Some(
            ports
                .iter()
                .map(|&(lo, hi)| (u32::from(lo), u32::from(hi)))
                .collect(),
        );
    }
    if let Some(types) = &rule.icmp_types {
        if proto != 1 && proto != 58 {
            return None;
        }
        let v: Vec<(u32, u32)> = types
            .iter()
            .filter_map(|t| t.for_proto(proto))
            .map(|t| (u32::from(t) << 8, (u32::from(t) << 8) | 0xFF))
            .collect();
        return (!v.is_empty()).then_some(v);
    }
    Some(vec![(0, 0xFFFF)])
}

fn segments(
    policy: &Policy,
    class: u32,
    rules: &[u32],
    dir: Dir,
    proto: u8,
    out: &mut Vec<VerdictEntry>,
) {
    // Events at port boundaries: (position, is_start, rule).
    let mut events: Vec<(u32, bool, u32)> = Vec::new();
    for &ri in rules {
        let r = &policy.rules[ri as usize];
        if r.direction != dir {
            continue;
        }
        if let Some(iv) = intervals(r, proto) {
            for (lo, hi) in iv {
                events.push((lo, true, ri));
                events.push((hi + 1, false, ri));
            }
        }
    }
    if events.is_empty() {
        return;
    }
    events.sort_unstable();
    let mut deny: BTreeSet<u32> = BTreeSet::new();
    let mut allow: BTreeSet<u32> = BTreeSet::new();
    // Active multiplicity per rule (a rule may list overlapping ranges).
    let mut active: HashMap<u32, u32> = HashMap::new();
    let mut segs: Vec<(u32, u32, Action, u32)> = Vec::new();
    let mut k = 0;
    while k < events.len() {
        let at = events[k].0;
        while k < events.len() && events[k].0 == at {
            let (_, start, ri) = events[k];
            let n = active.entry(ri).or_insert(0);
            let set = if policy.rules[ri as usize].action == Action::Deny {
                &mut deny
            } else {
                &mut allow
            };
            if start {
                *n += 1;
                set.insert(ri);
            } else {
                *n -= 1;
                if *n == 0 {
                    set.remove(&ri);
                }
            }
            k += 1;
        }
        if at > 0xFFFF {
            break;
        }
        let end = if k < events.len() {
            events[k].0.min(0x10000) - 1
        } else {
            0xFFFF
        };
        let win = deny
            .first()
            .map(|r| (Action::Deny, *r))
            .or_else(|| allow.first().map(|r| (Action::Allow, *r)));
        if let Some((action, rule)) = win {
            match segs.last_mut() {
                Some(last) if last.1 + 1 == at && last.2 == action && last.3 == rule => {
                    last.1 = end
                }
                _ => segs.push((at, end, action, rule)),
            }
        }
    }
    for (lo, hi, action, rule) in segs {
        for (port, plen) in range_to_prefixes(lo, hi) {
            out.push(VerdictEntry {
                class,
                dir,
                proto,
                port,
                plen,
                action,
                rule: rule as usize,
            });
        }
    }
}

/// The minimal set of 16-bit prefixes covering exactly `lo..=hi`.
pub fn range_to_prefixes(lo: u32, hi: u32) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = lo;
    while start <= hi {
        // Largest aligned block starting at `start` that fits in the range.
        let mut size = if start == 0 {
            1u32 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > hi {
            size >>= 1;
        }
        let plen = 16 - size.trailing_zeros() as u8;
        out.push((start as u16, plen));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fw::{Rule, reference};
    use std::net::IpAddr;

    #[test]
    fn ranges_become_minimal_prefixes() {
        assert_eq!(range_to_prefixes(0, 0xFFFF), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(22, 22), vec![(22, 16)]);
        assert_eq!(
            range_to_prefixes(8000, 8099),
            vec![(8000, 10), (8064, 11), (8096, 14)]
        );
        assert_eq!(range_to_prefixes(1, 0xFFFF).len(), 16);
        for (lo, hi) in [
            (0u32, 1023u32),
            (1024, 65535),
            (1, 1),
            (65535, 65535),
            (5, 77),
        ] {
            let ps = range_to_prefixes(lo, hi);
            for port in 0..=0xFFFFu32 {
                let n = ps
                    .iter()
                    .filter(|(p, l)| port_matches(*p, *l, port as u16))
                    .count();
                assert_eq!(
                    n,
                    usize::from(port >= lo && port <= hi),
                    "{lo}-{hi} at {port}"
                );
            }
        }
    }

    fn rule(
        name: &str,
        dir: Dir,
        action: Action,
        remote: Option<&[&str]>,
        except: &[&str],
        protos: &[Proto],
        ports: Option<Vec<(u16, u16)>>,
    ) -> Rule {
        Rule {
            name: name.into(),
            direction: dir,
            action,
            remote: remote.map(|r| r.iter().map(|s| Cidr::parse(s).unwrap()).collect()),
            except: except.iter().map(|s| Cidr::parse(s).unwrap()).collect(),
            protos: protos.to_vec(),
            ports,
            icmp_types: None,
            log: false,
            line: 1,
        }
    }

    fn policy(rules: Vec<Rule>, default_ingress: Action) -> Policy {
        Policy {
            source: "t.yaml".into(),
            interfaces: vec![],
            default_ingress,
            default_egress: Action::Allow,
            rules,
            sets: Default::default(),
            timeouts: Default::default(),
            logging: Default::default(),
        }
    }

    #[test]
    fn nested_prefixes_and_excepts() {
        let p = policy(
            vec![
                rule(
                    "office",
                    Dir::Ingress,
                    Action::Allow,
                    Some(&["10.0.0.0/8"]),
                    &["10.1.0.0/16"],
                    &[Proto::Tcp],
                    Some(vec![(22, 22)]),
                ),
                rule(
                    "bad",
                    Dir::Ingress,
                    Action::Deny,
                    Some(&["10.1.2.0/24"]),
                    &[],
                    &[Proto::Any],
                    None,
                ),
                rule(
                    "web",
                    Dir::Ingress,
                    Action::Allow,
                    None,
                    &[],
                    &[Proto::Tcp],
                    Some(vec![(80, 80), (443, 443)]),
                ),
            ],
            Action::Deny,
        );
        let c = compile(&p);
        let flow = |ip: &str, port| Flow {
            dir: Dir::Ingress,
            remote: ip.parse::<IpAddr>().unwrap(),
            proto: 6,
            port,
        };
        for (ip, port) in [
            ("10.0.0.1", 22),
            ("10.1.0.1", 22),
            ("10.1.2.3", 443),
            ("10.1.2.3", 22),
            ("192.0.2.1", 80),
            ("192.0.2.1", 22),
            ("2001:db8::1", 443),
        ] {
            let f = flow(ip, port);
            assert_eq!(c.lookup(&p, &f), reference::decide(&p, &f), "{ip}:{port}");
        }
        assert_eq!(c.lookup(&p, &flow("10.0.0.1", 22)).rule, Some(0));
        assert_eq!(c.lookup(&p, &flow("10.1.0.1", 22)).action, Action::Deny);
        assert_eq!(c.lookup(&p, &flow("10.1.2.3", 443)).rule, Some(1));
    }

    #[test]
    fn a_big_blocklist_is_one_class() {
        let ips: Vec<String> = (0..5000u32)
            .map(|i| format!("{}.{}.{}.0/24", 11 + i / 65536, (i / 256) % 256, i % 256))
            .collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let p = policy(
            vec![rule(
                "block",
                Dir::Ingress,
                Action::Deny,
                Some(&refs),
                &[],
                &[Proto::Any],
                None,
            )],
            Action::Allow,
        );
        let c = compile(&p);
        assert_eq!(c.classes.len(), 2);
        assert_eq!(c.addr4.len(), 5000);
        assert_eq!(c.verdicts.len(), PROTO_KEYS.len());
    }
}

#[cfg(test)]
mod differential {
    use super::*;
    use crate::fw::{policy, random, reference};
    use rand::{SeedableRng, rngs::SmallRng};

    /// The compiled maps, read the way the kernel reads them, agree with the
    /// reference on random policies and flows.
    #[test]
    fn compiled_lookup_equals_reference() {
        let mut rng = SmallRng::seed_from_u64(7);
        for n in 0..300 {
            let yaml = random::policy_yaml(&mut rng);
            let p = policy::parse(&yaml, std::path::Path::new("rand.yaml"))
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let c = compile(&p);
            for _ in 0..200 {
                let f = random::flow(&mut rng);
                let want = reference::decide(&p, &f);
                let got = c.lookup(&p, &f);
                assert_eq!(got, want, "policy {n}:\n{yaml}\nflow {f:?}");
            }
        }
    }

    /// Rules x ports blow up (every host class repeats the port table):
    /// refused past the budget, with the rule that makes it big first.
    #[test]
    fn the_memory_budget_refuses_a_blow_up_and_names_the_rule() {
        let mut text = String::from("default: { ingress: deny }\nrules:\n");
        for i in 0..300 {
            text.push_str(&format!(
                "  - {{ name: h{i}, direction: ingress, action: deny, remote: [10.0.{}.{}/32], proto: tcp, ports: [22] }}\n",
                i / 250,
                i % 250
            ));
        }
        let ports: Vec<String> = (0..300).map(|i| (1000 + 2 * i).to_string()).collect();
        text.push_str(&format!(
            "  - {{ name: many, direction: ingress, action: allow, proto: tcp, ports: [{}] }}\n",
            ports.join(", ")
        ));
        let p = crate::fw::policy::parse(&text, std::path::Path::new("b.yaml")).unwrap();
        let full = compile(&p);
        assert!(full.verdicts.len() > 300 * 300, "{}", full.verdicts.len());
        assert!(compile_within(&p, full.memory_bytes(), &mut |_, _, _| {}).is_ok());
        let e = compile_within(&p, 1 << 20, &mut |_, _, _| {}).unwrap_err();
        assert_eq!(p.rules[e.by_rule[0].0].name, "many");
        assert!(e.need > 1 << 20);
        // The estimate is close to the real size (within 10%).
        let real = full.memory_bytes() as f64;
        assert!(
            (e.need as f64 - real).abs() / real < 0.1,
            "{} vs {real}",
            e.need
        );
        assert_eq!(e.classes, full.classes.len());
    }
}
