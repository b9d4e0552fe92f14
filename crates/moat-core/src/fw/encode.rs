//! The physical form of a compiled policy: exactly which entry goes into
//! which kernel map, with which key and value bytes, and the `HAS_*` flags
//! that tell the kernel which maps to probe. The loader only copies these
//! entries; [`Encoded::lookup`] reads them the way `fw_policy` in
//! bpf/fw/fw.bpf.c does (host hash, then trie; exact port, then every port,
//! then port ranges; maps whose flag is off are never probed), so the
//! no-root differential test checks the encoding itself.
//!
//! ```text
//! compile::Compiled            encode::Encoded                     kernel map
//! (Cidr /32 or /128, class) -> host4 / host6 (address -> class)    fw_host4 / fw_host6
//! (other Cidr, class)       -> addr4 / addr6 (prefix -> class)     fw_addr4 / fw_addr6
//! VerdictEntry plen 16 / 0  -> ports (FwPortKey -> FwVerdict)      fw_ports
//! VerdictEntry other plen   -> verdict (48+plen bits -> FwVerdict) fw_verdict
//! ```

use std::collections::HashMap;

use moat_abi::fw::{self as abi, FwClass, FwPortKey, FwVerdict};

use super::{
    Decision, Flow,
    compile::{Compiled, PROTO_KEYS, PROTO_OTHER},
    policy::{Action, Dir, Policy},
};

/// A rule as the kernel numbers it: 0 is the direction's default, rule `i`
/// of the policy (0-based) is `i + 1` (verdict values, rule counters, ct
/// entries, events). The one place where the shift happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u32);

impl RuleId {
    pub const DEFAULT: RuleId = RuleId(abi::RULE_DEFAULT);

    /// The id of `policy.rules[index]`.
    pub fn of_rule(index: usize) -> RuleId {
        RuleId(index as u32 + 1)
    }

    /// The index into `policy.rules`, or None for the default.
    pub fn rule_index(self) -> Option<usize> {
        (self.0 != abi::RULE_DEFAULT).then(|| self.0 as usize - 1)
    }
}

pub fn action_byte(a: Action) -> u8 {
    match a {
        Action::Allow => abi::ACTION_ALLOW,
        Action::Deny => abi::ACTION_DENY,
    }
}

pub fn dir_byte(d: Dir) -> u8 {
    match d {
        Dir::Ingress => abi::DIR_INGRESS,
        Dir::Egress => abi::DIR_EGRESS,
    }
}

/// Verdict trie key data (after prefixlen): class (be32), dir, proto, port (be16).
pub fn verdict_key_data(class: u32, dir: u8, proto: u8, port: u16) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&class.to_be_bytes());
    k[4] = dir;
    k[5] = proto;
    k[6..].copy_from_slice(&port.to_be_bytes());
    k
}

/// Does a verdict entry of this port prefix length go to `fw_ports`
/// (exact port or every port) rather than the `fw_verdict` trie?
pub fn in_ports_map(plen: u8) -> bool {
    plen == 16 || plen == 0
}

/// Every entry of every policy map.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub host4: Vec<([u8; 4], FwClass)>,
    /// (prefix length, address, class) for the LPM trie.
    pub addr4: Vec<(u32, [u8; 4], FwClass)>,
    pub host6: Vec<([u8; 16], FwClass)>,
    pub addr6: Vec<(u32, [u8; 16], FwClass)>,
    pub ports: Vec<(FwPortKey, FwVerdict)>,
    /// (prefix length in bits, key data, verdict) for the LPM trie.
    pub verdict: Vec<(u32, [u8; 8], FwVerdict)>,
    /// `HAS_*` bits: the maps that hold entries.
    pub maps: u8,
    /// Entries of `fw_rule_stats` (the default and one per rule).
    pub rules: u32,
    /// The class of addresses only a /0 covers: 0.0.0.0/0 and ::/0 stay out
    /// of the tries (a trie miss means this class).
    pub any4: FwClass,
    pub any6: FwClass,
    /// The dense class (what addresses no rule names, or only "any" rules
    /// name, get) and its every verdict, `DENSE_SLOTS` values for `fw_dense`.
    pub dense: Option<(u32, Vec<u64>)>,
}

/// `max_entries` of each policy map (at least 1: the kernel refuses 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub addr4: u32,
    pub addr6: u32,
    pub host4: u32,
    pub host6: u32,
    pub verdict: u32,
    pub ports: u32,
    pub rules: u32,
    /// `fw_dense` slots (1: no dense table) and `fw_hostbits` words.
    pub dense: u32,
    pub hostbits: u32,
}

impl Sizes {
    /// The smallest maps the kernel takes (one entry each).
    pub const SMALLEST: Sizes = Sizes {
        addr4: 1,
        addr6: 1,
        host4: 1,
        host6: 1,
        verdict: 1,
        ports: 1,
        rules: 1,
        dense: 1,
        hostbits: 1,
    };

    /// Each size at least `min`'s (maps that must take other policies later).
    pub fn at_least(self, min: &Sizes) -> Sizes {
        Sizes {
            addr4: self.addr4.max(min.addr4),
            addr6: self.addr6.max(min.addr6),
            host4: self.host4.max(min.host4),
            host6: self.host6.max(min.host6),
            verdict: self.verdict.max(min.verdict),
            ports: self.ports.max(min.ports),
            rules: self.rules.max(min.rules),
            dense: self.dense.max(min.dense),
            hostbits: self.hostbits.max(min.hostbits),
        }
    }
}

/// Bytes the kernel needs per entry beyond key and value (hash bucket or
/// trie node, slab rounding): estimates for `fw check`.
const HASH_OVERHEAD: usize = 64;
const LPM_OVERHEAD: usize = 96;

impl Encoded {
    pub fn of(policy: &Policy, c: &Compiled) -> Encoded {
        let mut e = Encoded {
            rules: policy.rules.len() as u32 + 1,
            ..Encoded::default()
        };
        let blocks = blocked_classes(policy, c);
        let class_val = |class: u32| {
            let b = blocks.get(&class).copied().unwrap_or_default();
            FwClass {
                class_id: class,
                block_rule: [b[0].0, b[1].0],
                block_flags: [b[0].1, b[1].1],
                pad: [0; 2],
            }
        };
        for (cidr, class) in &c.addr4 {
            let mut a = [0u8; 4];
            a.copy_from_slice(&cidr.octets());
            let v = class_val(*class);
            if cidr.prefix_len() == 32 {
                e.host4.push((a, v));
            } else if cidr.prefix_len() == 0 {
                e.any4 = v;
            } else {
                e.addr4.push((u32::from(cidr.prefix_len()), a, v));
            }
        }
        for (cidr, class) in &c.addr6 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&cidr.octets());
            let v = class_val(*class);
            if cidr.prefix_len() == 128 {
                e.host6.push((a, v));
            } else if cidr.prefix_len() == 0 {
                e.any6 = v;
            } else {
                e.addr6.push((u32::from(cidr.prefix_len()), a, v));
            }
        }
        for v in &c.verdicts {
            let val = FwVerdict {
                rule: RuleId::of_rule(v.rule).0,
                action: action_byte(v.action),
                flags: if policy.rules[v.rule].log {
                    abi::FLAG_LOG
                } else {
                    0
                },
                pad: [0; 2],
            };
            if in_ports_map(v.plen) {
                e.ports.push((
                    FwPortKey {
                        class_id: v.class.to_be(),
                        dir: dir_byte(v.dir),
                        proto: v.proto,
                        plen: v.plen,
                        pad: 0,
                        port: if v.plen == 0 { 0 } else { v.port.to_be() },
                        pad2: [0; 2],
                    },
                    val,
                ));
            } else {
                e.verdict.push((
                    48 + u32::from(v.plen),
                    verdict_key_data(v.class, dir_byte(v.dir), v.proto, v.port),
                    val,
                ));
            }
        }
        let mut m = 0;
        let mut set = |cond: bool, bit: u8| {
            if cond {
                m |= bit;
            }
        };
        set(!e.addr4.is_empty(), abi::HAS_ADDR4);
        set(!e.addr6.is_empty(), abi::HAS_ADDR6);
        set(!e.host4.is_empty(), abi::HAS_HOST4);
        set(!e.host6.is_empty(), abi::HAS_HOST6);
        set(e.ports.iter().any(|p| p.0.plen == 16), abi::HAS_PORT_EXACT);
        set(e.ports.iter().any(|p| p.0.plen == 0), abi::HAS_PORT_ANY);
        set(!e.verdict.is_empty(), abi::HAS_VERDICT);
        set(!blocks.is_empty(), abi::HAS_BLOCK);
        e.maps = m;
        e.dense = Some(dense_verdicts(
            policy,
            c,
            e.any4.class_id.max(e.any6.class_id),
        ));
        e
    }

    pub fn sizes(&self) -> Sizes {
        let n = |x: usize| x.max(1) as u32;
        Sizes {
            addr4: n(self.addr4.len()),
            addr6: n(self.addr6.len()),
            host4: n(self.host4.len()),
            host6: n(self.host6.len()),
            verdict: n(self.verdict.len()),
            ports: n(self.ports.len()),
            rules: self.rules.max(1),
            dense: if self.dense.is_some() {
                abi::DENSE_SLOTS
            } else {
                1
            },
            hostbits: self.hostbits_words(),
        }
    }

    /// `HAS2_*` bits of this encoding.
    pub fn maps2(&self) -> u8 {
        let mut m = 0;
        if self.dense.is_some() {
            m |= abi::HAS2_DENSE;
        }
        if !self.host4.is_empty() || !self.host6.is_empty() {
            m |= abi::HAS2_HOSTBITS;
        }
        m
    }

    /// `fw_hostbits` words for this policy's host entries: 16 bits per
    /// address (a false "maybe" about 1 in 16), a power of two, at least 64.
    pub fn hostbits_words(&self) -> u32 {
        let n = self.host4.len() + self.host6.len();
        if n == 0 {
            return 1;
        }
        ((n * 16).next_power_of_two().max(4096) / 64) as u32
    }

    /// The `fw_hostbits` words over `words` words (a power of two).
    pub fn hostbits(&self, words: u32) -> Vec<u64> {
        let mask = words * 64 - 1;
        let mut w = vec![0u64; words as usize];
        let mut set = |a: &[u8]| {
            let bit = addr_hash(a) & mask;
            w[(bit >> 6) as usize] |= 1 << (bit & 63);
        };
        self.host4.iter().for_each(|(a, _)| set(a));
        self.host6.iter().for_each(|(a, _)| set(a));
        w
    }

    /// (map, entries) for every policy map, in the order of bpf/common/abi.h.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        vec![
            (abi::MAP_HOST4, self.host4.len()),
            (abi::MAP_ADDR4, self.addr4.len()),
            (abi::MAP_HOST6, self.host6.len()),
            (abi::MAP_ADDR6, self.addr6.len()),
            (abi::MAP_PORTS, self.ports.len()),
            (abi::MAP_VERDICT, self.verdict.len()),
        ]
    }

    pub fn entries(&self) -> usize {
        self.map_entries().iter().map(|m| m.1).sum()
    }

    /// Estimated kernel memory of the policy maps, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.host4.len() * (4 + 4 + HASH_OVERHEAD)
            + self.addr4.len() * (8 + 4 + LPM_OVERHEAD)
            + self.host6.len() * (16 + 4 + HASH_OVERHEAD)
            + self.addr6.len() * (20 + 4 + LPM_OVERHEAD)
            + self.ports.len() * (12 + 8 + HASH_OVERHEAD)
            + self.verdict.len() * (12 + 8 + LPM_OVERHEAD)
            + self.dense.as_ref().map_or(0, |d| d.1.len() * 8)
            + self.hostbits_words() as usize * 8
    }

    /// An index over the entries for [`Encoded::lookup`] (hash maps as hash maps).
    pub fn index(&self) -> Lookup<'_> {
        Lookup {
            e: self,
            host4: self.host4.iter().map(|(a, c)| (*a, *c)).collect(),
            host6: self.host6.iter().map(|(a, c)| (*a, *c)).collect(),
            ports: self.ports.iter().map(|(k, v)| (*k, *v)).collect(),
            hostbits: self.hostbits(self.hostbits_words()),
        }
    }
}

/// [`Encoded`] with its hash maps built, to look flows up like the kernel.
pub struct Lookup<'a> {
    e: &'a Encoded,
    host4: HashMap<[u8; 4], FwClass>,
    host6: HashMap<[u8; 16], FwClass>,
    ports: HashMap<FwPortKey, FwVerdict>,
    hostbits: Vec<u64>,
}

/// Do the first `bits` bits of `a` and `b` agree?
fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) & (0xFFu8 << (8 - rest)) == 0
}

/// Longest-prefix match over (prefix length, key data, value) entries.
fn lpm<'v, const N: usize, V>(entries: &'v [(u32, [u8; N], V)], key: &[u8; N]) -> Option<&'v V> {
    entries
        .iter()
        .filter(|(plen, data, _)| prefix_eq(data, key, *plen))
        .max_by_key(|(plen, _, _)| *plen)
        .map(|(_, _, v)| v)
}

impl Lookup<'_> {
    /// The decision of the encoded maps for a connection's first packet, found
    /// in the kernel's order (see the module comment).
    pub fn lookup(&self, policy: &Policy, flow: &Flow) -> Decision {
        let m = self.e.maps;
        let has = |bit: u8| m & bit != 0;
        // The host probe is skipped when the address's bit is clear.
        let maybe = |a: &[u8]| {
            let bit = addr_hash(a) & (self.hostbits.len() as u32 * 64 - 1);
            self.e.maps2() & abi::HAS2_HOSTBITS == 0
                || self.hostbits[(bit >> 6) as usize] >> (bit & 63) & 1 == 1
        };
        let cls = match flow.remote {
            std::net::IpAddr::V4(a) => {
                let a = a.octets();
                (has(abi::HAS_HOST4) && maybe(&a))
                    .then(|| self.host4.get(&a))
                    .flatten()
                    .or_else(|| {
                        has(abi::HAS_ADDR4)
                            .then(|| lpm(&self.e.addr4, &a))
                            .flatten()
                    })
                    .or(Some(&self.e.any4))
            }
            std::net::IpAddr::V6(a) => {
                let a = a.octets();
                (has(abi::HAS_HOST6) && maybe(&a))
                    .then(|| self.host6.get(&a))
                    .flatten()
                    .or_else(|| {
                        has(abi::HAS_ADDR6)
                            .then(|| lpm(&self.e.addr6, &a))
                            .flatten()
                    })
                    .or(Some(&self.e.any6))
            }
        };
        if let Some(c) = cls.filter(|c| has(abi::HAS_BLOCK) && c.block_rule[0] != 0) {
            // The kernel's blocklist step: denied before anything else.
            return Decision {
                action: Action::Deny,
                rule: RuleId(c.block_rule[usize::from(dir_byte(flow.dir))]).rule_index(),
            };
        }
        let class = cls.map_or(0, |c| c.class_id);
        let proto = if PROTO_KEYS[..4].contains(&flow.proto) {
            flow.proto
        } else {
            PROTO_OTHER
        };
        let dir = dir_byte(flow.dir);
        if let Some((_, d)) = self.e.dense.as_ref().filter(|d| d.0 == class) {
            // The kernel's dense table: one read, 0 meaning the default.
            let port = if proto == PROTO_OTHER { 0 } else { flow.port };
            let v = d[abi::dense_idx(dir, dense_row(proto), port) as usize];
            let action = (v >> 32) as u8;
            return if action == 0 {
                Decision {
                    action: policy.default_for(flow.dir),
                    rule: None,
                }
            } else {
                Decision {
                    action: if action == abi::ACTION_ALLOW {
                        Action::Allow
                    } else {
                        Action::Deny
                    },
                    rule: RuleId(v as u32).rule_index(),
                }
            };
        }
        let mut pk = FwPortKey {
            class_id: class.to_be(),
            dir,
            proto,
            plen: 16,
            pad: 0,
            port: flow.port.to_be(),
            pad2: [0; 2],
        };
        let mut v = None;
        if has(abi::HAS_PORT_EXACT) {
            v = self.ports.get(&pk);
        }
        if v.is_none() && has(abi::HAS_PORT_ANY) {
            pk.plen = 0;
            pk.port = 0;
            v = self.ports.get(&pk);
        }
        if v.is_none() && has(abi::HAS_VERDICT) {
            v = lpm(
                &self.e.verdict,
                &verdict_key_data(class, dir, proto, flow.port),
            );
        }
        match v {
            Some(v) => Decision {
                action: if v.action == abi::ACTION_ALLOW {
                    Action::Allow
                } else {
                    Action::Deny
                },
                rule: RuleId(v.rule).rule_index(),
            },
            None => Decision {
                action: policy.default_for(flow.dir),
                rule: None,
            },
        }
    }
}

/// FNV-1a over an address's native-endian 32-bit words, as `fw_addr_hash`
/// in fw.bpf.c: its `fw_hostbits` bit, masked.
pub fn addr_hash(a: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for w in a.chunks_exact(4) {
        h = (h ^ u32::from_ne_bytes([w[0], w[1], w[2], w[3]])).wrapping_mul(0x0100_0193);
    }
    h ^ (h >> 16)
}

/// Row of `fw_dense` for a protocol key.
fn dense_row(proto: u8) -> u32 {
    match proto {
        6 => 0,
        17 => 1,
        1 => 2,
        58 => 3,
        _ => 4,
    }
}

/// Every verdict of `class`, for `fw_dense` (0: the default).
fn dense_verdicts(policy: &Policy, c: &Compiled, class: u32) -> (u32, Vec<u64>) {
    let mut d = vec![0u64; abi::DENSE_SLOTS as usize];
    for v in c.verdicts.iter().filter(|v| v.class == class) {
        let flags = if policy.rules[v.rule].log {
            abi::FLAG_LOG
        } else {
            0
        };
        let val = u64::from(RuleId::of_rule(v.rule).0)
            | u64::from(action_byte(v.action)) << 32
            | u64::from(flags) << 40;
        let span = 1u32 << (16 - v.plen);
        let lo = u32::from(v.port) & !(span - 1);
        for port in lo..lo + span {
            d[abi::dense_idx(dir_byte(v.dir), dense_row(v.proto), port as u16) as usize] = val;
        }
    }
    (class, d)
}

/// The blocklists: classes (not 0, which has no map entry) whose every
/// verdict, in both directions, for every protocol key and every port, is a
/// deny by one rule per direction. Class id -> per `DIR_*`: (rule id,
/// `FLAG_*` of that rule).
pub fn blocked_classes(policy: &Policy, c: &Compiled) -> HashMap<u32, [(u32, u8); 2]> {
    // class -> per direction (rule index, whole-range deny entries); None: not a block.
    type Seen = Option<[Option<(usize, usize)>; 2]>;
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    for v in &c.verdicts {
        let slot = seen.entry(v.class).or_insert(Some([None, None]));
        let Some(dirs) = slot else { continue };
        let d = usize::from(dir_byte(v.dir));
        let whole_deny = v.plen == 0 && v.action == Action::Deny;
        match dirs[d] {
            _ if !whole_deny => *slot = None,
            None => dirs[d] = Some((v.rule, 1)),
            Some((rule, n)) if rule == v.rule => dirs[d] = Some((rule, n + 1)),
            Some(_) => *slot = None,
        }
    }
    let flags = |rule: usize| {
        if policy.rules[rule].log {
            abi::FLAG_LOG
        } else {
            0
        }
    };
    seen.into_iter()
        .filter_map(|(class, s)| {
            let [Some((r0, n0)), Some((r1, n1))] = s? else {
                return None;
            };
            let whole = PROTO_KEYS.len();
            (class != 0 && n0 == whole && n1 == whole).then(|| {
                (
                    class,
                    [
                        (RuleId::of_rule(r0).0, flags(r0)),
                        (RuleId::of_rule(r1).0, flags(r1)),
                    ],
                )
            })
        })
        .collect()
}

/// Credit one token costs in a per-CPU bucket refilled at the whole-host
/// `rate` per second shared by `cpus` CPUs.
pub fn cost_ns(rate: u32, cpus: u32) -> u64 {
    1_000_000_000 / u64::from(per_cpu(rate, cpus))
}

/// A whole-host rate as the per-CPU rate the token buckets use (at least 1).
pub fn per_cpu(rate: u32, cpus: u32) -> u32 {
    rate.div_ceil(cpus.max(1)).max(1)
}

/// The config map's value for this policy (everything but what the loader
/// alone knows: nothing, given the generation and the CPU count).
pub fn config(policy: &Policy, e: &Encoded, generation: u32, cpus: u32) -> abi::FwConfig {
    let l = &policy.logging;
    abi::FwConfig {
        generation,
        default_ingress: action_byte(policy.default_ingress),
        default_egress: action_byte(policy.default_egress),
        maps: e.maps,
        pad: 0,
        timeout_tcp: policy.timeouts.tcp,
        timeout_udp: policy.timeouts.udp,
        timeout_other: policy.timeouts.other,
        ev_sample: l.sample,
        ev_cost_ns: cost_ns(l.rate, cpus),
        ev_cap_ns: cost_ns(l.rate, cpus) * u64::from(per_cpu(l.burst, cpus)),
        flow_cost_ns: cost_ns(l.flow_rate, cpus),
        flow_cap_ns: cost_ns(l.flow_rate, cpus) * u64::from(per_cpu(l.flow_rate, cpus)),
        log_drops: u8::from(l.drops),
        pad2: [0; 7],
        tcp_timeouts: policy.timeouts.tcp_by_state(),
        any4: e.any4,
        any6: e.any6,
        dense_class: e.dense.as_ref().map_or(0, |d| d.0),
        hostbits_mask: e.hostbits_words() * 64 - 1,
        maps2: e.maps2(),
        pad3: [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fw::{compile::compile, policy, random, reference};
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn rule_ids_shift_once() {
        assert_eq!(RuleId::of_rule(0), RuleId(1));
        assert_eq!(RuleId(1).rule_index(), Some(0));
        assert_eq!(RuleId::DEFAULT.rule_index(), None);
    }

    #[test]
    fn prefixes_match_bit_by_bit() {
        assert!(prefix_eq(&[10, 1, 2, 3], &[10, 1, 9, 9], 16));
        assert!(prefix_eq(&[10, 1, 2, 3], &[10, 1, 9, 9], 20));
        assert!(!prefix_eq(&[10, 1, 2, 3], &[10, 1, 9, 9], 23));
        assert!(prefix_eq(&[0b1010_0000], &[0b1011_1111], 3));
        assert!(!prefix_eq(&[0b1010_0000], &[0b1011_1111], 4));
        assert!(prefix_eq(&[1, 2], &[3, 4], 0));
    }

    /// The encoded maps, probed in the kernel's order, agree with the
    /// reference on random policies and flows: a wrong map, flag, byte order
    /// or prefix length in the encoding fails here, without root.
    #[test]
    fn encoded_lookup_equals_reference() {
        let mut rng = SmallRng::seed_from_u64(11);
        for n in 0..300 {
            let yaml = random::policy_yaml(&mut rng);
            let p = policy::parse(&yaml, std::path::Path::new("rand.yaml"))
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let e = Encoded::of(&p, &compile(&p));
            let idx = e.index();
            for _ in 0..200 {
                let f = random::flow(&mut rng);
                let want = reference::decide(&p, &f);
                let got = idx.lookup(&p, &f);
                assert_eq!(got, want, "policy {n}:\n{yaml}\nflow {f:?}");
            }
        }
    }

    #[test]
    fn blocklists_are_found_and_encoded() {
        let p = policy::parse(
            "default: { ingress: deny, egress: allow }\nrules:\n  - { name: in, direction: ingress, action: deny, remote: [10.9.0.0/16, 10.8.0.1] }\n  - { name: out, direction: egress, action: deny, remote: [10.9.0.0/16, 10.8.0.1], log: true }\n  - { name: half, direction: ingress, action: deny, remote: [10.7.0.1] }\n  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [80] }\n",
            std::path::Path::new("b.yaml"),
        )
        .unwrap();
        let e = Encoded::of(&p, &compile(&p));
        assert_eq!(e.maps & abi::HAS_BLOCK, abi::HAS_BLOCK);
        let host = |a: [u8; 4]| e.host4.iter().find(|h| h.0 == a).unwrap().1;
        // Denied both ways whatever the port: a block, one rule per direction.
        assert_eq!(host([10, 8, 0, 1]).block_rule, [1, 2]);
        assert_eq!(host([10, 8, 0, 1]).block_flags, [0, abi::FLAG_LOG]);
        let net = e.addr4.iter().find(|a| a.0 == 16).unwrap();
        assert_eq!((net.1, net.2.block_rule), ([10, 9, 0, 0], [1, 2]));
        // Denied one way only: replies to our own connections must pass.
        assert_eq!(host([10, 7, 0, 1]).block_rule, [0, 0]);
        // A protocol left to the (allow) default makes it no block.
        let p = policy::parse(
            "rules:\n  - { name: in, direction: ingress, action: deny, remote: [10.8.0.1], proto: tcp }\n  - { name: out, direction: egress, action: deny, remote: [10.8.0.1] }\n",
            std::path::Path::new("b.yaml"),
        )
        .unwrap();
        let e = Encoded::of(&p, &compile(&p));
        assert_eq!(e.maps & abi::HAS_BLOCK, 0);
        assert_eq!(e.host4[0].1.block_rule, [0, 0]);
    }

    #[test]
    fn entries_go_to_the_map_their_shape_says() {
        let p = policy::parse(
            "rules:\n  - { name: a, direction: ingress, action: allow, remote: [10.0.0.1/32, 10.1.0.0/16, \"2001:db8::1/128\"], proto: tcp, ports: [22, 80-81, 1000-1999] }\n",
            std::path::Path::new("m.yaml"),
        )
        .unwrap();
        let e = Encoded::of(&p, &compile(&p));
        assert_eq!(e.host4.len(), 1);
        assert_eq!(e.addr4.len(), 1, "10.1/16");
        assert_eq!(e.host6.len(), 1);
        assert!(e.ports.iter().all(|(k, _)| k.plen == 16 || k.plen == 0));
        assert!(
            e.verdict
                .iter()
                .all(|(plen, _, _)| *plen > 48 && *plen < 64)
        );
        assert_eq!(e.maps & abi::HAS_PORT_EXACT, abi::HAS_PORT_EXACT);
        assert_eq!(e.rules, 2);
    }
}
