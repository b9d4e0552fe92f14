//! The policy file: YAML in, a checked [`Policy`] out, or every error found,
//! each as `FILE:LINE:COL: reason`.
//!
//! ```yaml
//! interfaces: [eth0]
//! default: { ingress: deny, egress: allow }
//! rules:
//!   - name: ssh-office
//!     direction: ingress
//!     action: allow
//!     remote: [203.0.113.0/24, "2001:db8:1::/48", "@office"]
//!     except: [203.0.113.7/32]
//!     proto: tcp
//!     ports: [22, "8000-8099"]
//! sets:
//!   office: [198.51.100.0/25]
//!   blocklist: { file: blocklist.txt }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use super::addr::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A protocol a rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Any,
}

impl Proto {
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(1),
            Proto::Icmpv6 => Some(58),
            Proto::Any => None,
        }
    }
}

/// An ICMP type as written: a number applies to both ICMP versions, a name
/// resolves per version (`echo-request` is 8 for icmp, 128 for icmpv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpType {
    Number(u8),
    Named { v4: Option<u8>, v6: Option<u8> },
}

impl IcmpType {
    pub fn for_proto(self, proto: u8) -> Option<u8> {
        match self {
            IcmpType::Number(n) => Some(n),
            IcmpType::Named { v4, v6 } => {
                if proto == 58 {
                    v6
                } else {
                    v4
                }
            }
        }
    }
}

/// ICMP type names: (name, icmp type, icmpv6 type).
pub const ICMP_NAMES: &[(&str, Option<u8>, Option<u8>)] = &[
    ("echo-reply", Some(0), Some(129)),
    ("destination-unreachable", Some(3), Some(1)),
    ("source-quench", Some(4), None),
    ("redirect", Some(5), Some(137)),
    ("echo-request", Some(8), Some(128)),
    ("router-advertisement", Some(9), Some(134)),
    ("router-solicitation", Some(10), Some(133)),
    ("time-exceeded", Some(11), Some(3)),
    ("parameter-problem", Some(12), Some(4)),
    ("timestamp-request", Some(13), None),
    ("timestamp-reply", Some(14), None),
    ("packet-too-big", None, Some(2)),
    ("neighbor-solicitation", None, Some(135)),
    ("neighbor-advertisement", None, Some(136)),
];

/// One rule, checked. `remote: None` means any address of either family.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub direction: Dir,
    pub action: Action,
    pub remote: Option<Vec<Cidr>>,
    pub except: Vec<Cidr>,
    /// Never empty; `[Any]` when the rule names no protocol.
    pub protos: Vec<Proto>,
    /// Inclusive port ranges (tcp/udp only); `None`: all ports.
    pub ports: Option<Vec<(u16, u16)>>,
    /// ICMP types (icmp/icmpv6 only); `None`: all types.
    pub icmp_types: Option<Vec<IcmpType>>,
    /// `log: true`: the rule's verdicts emit events (allow: the first packet
    /// of each connection; deny: every dropped packet).
    pub log: bool,
    /// Line of the rule in the policy file.
    pub line: usize,
}

impl Rule {
    /// Does this rule's protocol/port/type part select `proto`/`port`?
    /// (`port`: tcp/udp destination port, icmp: type << 8 | code.)
    pub fn selects_l4(&self, proto: u8, port: u16) -> bool {
        let is_l4 = proto == 6 || proto == 17;
        let is_icmp = proto == 1 || proto == 58;
        let proto_ok = self.protos.iter().any(|p| match p.number() {
            Some(n) => n == proto,
            None => true,
        });
        if !proto_ok {
            return false;
        }
        if let Some(ports) = &self.ports {
            return is_l4 && ports.iter().any(|&(lo, hi)| lo <= port && port <= hi);
        }
        if let Some(types) = &self.icmp_types {
            let ty = (port >> 8) as u8;
            return is_icmp && types.iter().any(|t| t.for_proto(proto) == Some(ty));
        }
        true
    }
}

/// Idle seconds after which a tracked connection is forgotten (TCP: per state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP ESTABLISHED (`tcp_timeout`).
    pub tcp: u32,
    pub udp: u32,
    pub other: u32,
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// `conntrack: { max: N }`: connections each conntrack table holds
    /// (new ones and assured ones, N each); None: sized from the machine's
    /// memory when loaded.
    pub max: Option<u32>,
}

/// Smallest and largest `conntrack: { max }`.
pub const CT_MAX_RANGE: (u32, u32) = (1024, 16_777_216);

impl Default for Timeouts {
    /// nf_conntrack's defaults: TCP established 5 days, syn_sent 120 s,
    /// syn_recv 60 s, fin_wait 120 s, close_wait 60 s, last_ack 30 s,
    /// time_wait 120 s, close 10 s; udp 120 s, other 60 s.
    fn default() -> Self {
        Timeouts {
            tcp: 432_000,
            udp: 120,
            other: 60,
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            max: None,
        }
    }
}

impl Timeouts {
    /// Per TCP state, indexed by `moat_abi::fw::TCP_*`; NONE and the unused
    /// slots get established's.
    pub fn tcp_by_state(&self) -> [u32; moat_abi::fw::TCP_TIMEOUT_SLOTS as usize] {
        use moat_abi::fw::*;
        let mut t = [self.tcp; TCP_TIMEOUT_SLOTS as usize];
        t[TCP_SYN_SENT as usize] = self.tcp_syn_sent;
        t[TCP_SYN_RECV as usize] = self.tcp_syn_recv;
        t[TCP_FIN_WAIT as usize] = self.tcp_fin_wait;
        t[TCP_CLOSE_WAIT as usize] = self.tcp_close_wait;
        t[TCP_LAST_ACK as usize] = self.tcp_last_ack;
        t[TCP_TIME_WAIT as usize] = self.tcp_time_wait;
        t[TCP_CLOSE as usize] = self.tcp_close;
        t
    }
}

/// `log:` — which packets become events, and how many at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logging {
    /// Every dropped packet qualifies for an event (not only `log: true` rules).
    pub drops: bool,
    /// Events per second at most (whole host), and the burst above it.
    pub rate: u32,
    pub burst: u32,
    /// One event per `sample` qualifying packets.
    pub sample: u32,
    /// New denied flows recorded per second at most (whole host).
    pub flow_rate: u32,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            drops: true,
            rate: 1000,
            burst: 1000,
            sample: 1,
            // Each new denied flow is an LRU insert (with eviction when
            // full): measured, 10,000/s cost a flood ~25% of moat's drop rate
            // on a 2-core VM, 1,000/s a few percent.
            flow_rate: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The file it came from (for messages).
    pub source: PathBuf,
    pub interfaces: Vec<String>,
    pub default_ingress: Action,
    pub default_egress: Action,
    pub rules: Vec<Rule>,
    /// Set name -> number of entries (for `fw check`).
    pub sets: BTreeMap<String, usize>,
    pub timeouts: Timeouts,
    pub logging: Logging,
}

impl Policy {
    pub fn default_for(&self, dir: Dir) -> Action {
        match dir {
            Dir::Ingress => self.default_ingress,
            Dir::Egress => self.default_egress,
        }
    }
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.msg
        )
    }
}

/// Every error of one policy file, in file order: the first ones kept
/// (`.0`), and how many there were in all (`.1`, at least `.0.len()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>, pub usize);

/// Errors kept (and shown) per policy: enough to fix a file, bounded so that
/// a hostile file cannot make the report large.
pub const MAX_ERRORS_KEPT: usize = 100;
pub const MAX_ERRORS_SHOWN: usize = 20;
/// Largest policy file and set file read (a policy names sets for big lists).
pub const MAX_POLICY_BYTES: u64 = 16 << 20;
pub const MAX_SET_FILE_BYTES: u64 = 256 << 20;

impl PolicyErrors {
    pub(crate) fn one(
        file: &Path,
        line: usize,
        col: usize,
        msg: impl Into<String>,
    ) -> PolicyErrors {
        PolicyErrors(
            vec![PolicyError {
                file: file.to_path_buf(),
                line,
                col,
                msg: msg.into(),
            }],
            1,
        )
    }
    /// How many errors the policy has (shown or not).
    pub fn total(&self) -> usize {
        self.1.max(self.0.len())
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(MAX_ERRORS_SHOWN).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        let hidden = self.total() - self.0.len().min(MAX_ERRORS_SHOWN);
        if hidden > 0 {
            write!(f, "\n... and {hidden} more error(s) not shown")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub(crate) mod parser;
pub mod read;
#[cfg(test)]
mod tests;

use parser::Parser;
pub use read::read_text;

/// Reads and checks a policy file; set files are read relative to it.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    match read_text(path, "policy file", MAX_POLICY_BYTES) {
        Ok(text) => parse(&text, path),
        Err((l, c, msg)) => Err(PolicyErrors::one(path, l, c, msg)),
    }
}

/// Refuses what YAML would read as less than the file says: more than one
/// document (everything after a second `---` or a `...` would be dropped).
fn check_single_document(text: &str, path: &Path) -> Result<(), PolicyErrors> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = |m: &str| {
            line == m || line.starts_with(&format!("{m} ")) || line.starts_with(&format!("{m}\t"))
        };
        if marker("...") {
            return Err(PolicyErrors::one(
                path,
                i + 1,
                1,
                "a YAML document end marker `...`: a policy is one document, and what follows would be ignored",
            ));
        }
        if marker("---") {
            if seen_content {
                return Err(PolicyErrors::one(
                    path,
                    i + 1,
                    1,
                    "a second YAML document (`---`): a policy is one document, and the rest would be ignored",
                ));
            }
            seen_content = true;
            continue;
        }
        let t = line.trim_start();
        if !t.is_empty() && !t.starts_with('#') {
            seen_content = true;
        }
    }
    Ok(())
}

const EMPTY_POLICY: &str = "the policy is empty; a policy that allows everything must say so, e.g. `default: { ingress: allow, egress: allow }` and `rules: []`";

/// Checks policy text; `path` names it in messages and anchors set files.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyErrors> {
    if let Some(off) = text.find('\0') {
        let line = text[..off].matches('\n').count() + 1;
        let col = text[..off]
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
            + 1;
        return Err(PolicyErrors::one(
            path,
            line,
            col,
            "the policy contains a NUL byte",
        ));
    }
    check_single_document(text, path)?;
    let content = text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    });
    if !content {
        return Err(PolicyErrors::one(path, 1, 1, EMPTY_POLICY));
    }
    let mut p = Parser {
        file: path.to_path_buf(),
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        errors: Vec::new(),
        total: 0,
    };
    let policy = p.policy(text);
    if p.total == 0
        && let Some(policy) = policy
    {
        return Ok(policy);
    }
    p.errors
        .sort_by_key(|e| (e.file != p.file, e.file.clone(), e.line, e.col));
    Err(PolicyErrors(p.errors, p.total))
}
