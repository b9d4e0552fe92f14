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
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use marked_yaml::{LoaderOptions, Node, Span, loader::LoadError};

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

/// Idle seconds after which a tracked connection is forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub udp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    /// tcp 5 days (as netfilter's established TCP), udp 120 s, other 60 s.
    fn default() -> Self {
        Timeouts {
            tcp: 432_000,
            udp: 120,
            other: 60,
        }
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
    fn one(file: &Path, line: usize, col: usize, msg: impl Into<String>) -> PolicyErrors {
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

/// Reads a policy or set file: a regular file (a FIFO would hang, a device
/// like /dev/zero never ends) of at most `max` bytes, as UTF-8 text without
/// NUL bytes (errors name the line and column of the first bad byte).
pub fn read_text(path: &Path, what: &str, max: u64) -> Result<String, (usize, usize, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the type is
    // checked on the opened file, so it cannot be swapped in between.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(path)
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    let md = f
        .metadata()
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    if !md.is_file() {
        let kind = file_kind(&md);
        return Err((
            0,
            0,
            format!("{what} must be a regular file, this is {kind}"),
        ));
    }
    if md.len() > max {
        return Err((
            0,
            0,
            format!(
                "{what} is {} bytes, more than the limit of {max} bytes",
                md.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (0, 0, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err((
            0,
            0,
            format!("{what} grew past the limit of {max} bytes while being read"),
        ));
    }
    let at = |off: usize| {
        let before = &bytes[..off];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // Column in characters of the valid text before the bad byte.
        let col = String::from_utf8_lossy(&bytes[start..off]).chars().count() + 1;
        (line, col)
    };
    let text = match String::from_utf8(bytes.clone()) {
        Ok(t) => t,
        Err(e) => {
            let off = e.utf8_error().valid_up_to();
            let (l, c) = at(off);
            return Err((
                l,
                c,
                format!("{what} is not UTF-8 text (byte 0x{:02x})", bytes[off]),
            ));
        }
    };
    if let Some(off) = bytes.iter().position(|&b| b == 0) {
        let (l, c) = at(off);
        return Err((l, c, format!("{what} contains a NUL byte")));
    }
    Ok(text)
}

fn libc_o_nonblock() -> i32 {
    0o4000 // O_NONBLOCK on Linux
}

#[cfg(test)]
unsafe extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo_raw(path: *const std::ffi::c_char, mode: u32) -> i32;
}

/// mkfifo(path, 0600), for the tests.
#[cfg(test)]
unsafe fn libc_mkfifo(path: *const std::ffi::c_char) -> i32 {
    // SAFETY: the caller passes a valid C string.
    unsafe { libc_mkfifo_raw(path, 0o600) }
}

fn file_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

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

struct Parser {
    file: PathBuf,
    base: PathBuf,
    /// The first errors (at most MAX_ERRORS_KEPT).
    errors: Vec<PolicyError>,
    /// Every error, kept or not.
    total: usize,
}

/// Shortens long quoted values in a message (a hostile 10 MB value must not
/// make a 10 MB error line): each quoted run keeps its first 40 characters.
fn shorten(msg: String) -> String {
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

fn pos(span: &Span) -> (usize, usize) {
    span.start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((0, 0))
}

fn node_pos(n: &Node) -> (usize, usize) {
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

    fn policy(&mut self, text: &str) -> Option<Policy> {
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
                "conntrack must be a mapping (tcp_timeout, udp_timeout, other_timeout)",
            );
            return t;
        };
        for (k, v) in m.iter() {
            let slot = match k.as_str() {
                "tcp_timeout" => &mut t.tcp,
                "udp_timeout" => &mut t.udp,
                "other_timeout" => &mut t.other,
                other => {
                    self.err(pos(k.span()), format!("unknown key {other:?} in conntrack (expected tcp_timeout, udp_timeout, other_timeout)"));
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

fn load_error(e: &LoadError) -> ((usize, usize), String) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        match parse(text, Path::new("p.yaml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn full_example_parses() {
        let tmp = tempfile::Builder::new()
            .prefix("moat-pol-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            dir.join("block.txt"),
            "# bad people\n192.0.2.0/24\n\n2001:db8:bad::/48 # v6\n",
        )
        .unwrap();
        let text = r#"
interfaces: [eth0]
default:
  ingress: deny
  egress: allow
rules:
  - name: ssh-office
    direction: ingress
    action: allow
    remote: [203.0.113.0/24, "2001:db8:1::/48", "@office"]
    except: [203.0.113.7/32]
    proto: tcp
    ports: [22, "8000-8099"]
  - name: ping
    direction: ingress
    action: allow
    proto: [icmp, icmpv6]
    icmp_types: [echo-request, 3]
  - name: block
    direction: ingress
    action: deny
    remote: "@blocklist"
sets:
  office: [198.51.100.0/25]
  blocklist: { file: block.txt }
"#;
        let p = parse(text, &dir.join("policy.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.default_ingress, Action::Deny);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[0].remote.as_ref().unwrap().len(), 3);
        assert_eq!(p.rules[0].ports, Some(vec![(22, 22), (8000, 8099)]));
        assert_eq!(p.rules[0].line, 7);
        assert_eq!(p.rules[2].remote.as_ref().unwrap().len(), 2);
        assert!(p.rules[1].selects_l4(1, 8 << 8));
        assert!(p.rules[1].selects_l4(58, 128 << 8));
        assert!(!p.rules[1].selects_l4(58, 8 << 8));
        assert_eq!(p.sets["blocklist"], 2);
    }

    #[test]
    fn every_error_is_located_and_reported() {
        let text = "\
rules:
  - name: a
    direction: ingress
    action: allow
    remote: [10.0.0.0/33]
    ports: [0, 70000, \"90-80\"]
    proto: tcp
  - name: a
    direction: sideways
    action: allow
    colour: red
  - name: b
    direction: ingress
    action: allow
    proto: tcp
    icmp_types: [echo-request]
  - name: c
    direction: egress
    action: deny
    proto: icmp
    ports: [22]
  - name: d
    direction: egress
    action: deny
    remote: \"@nope\"
";
        let e = errs(text);
        let want = [
            "p.yaml:5:14: \"10.0.0.0/33\": prefix length must be 0..=32",
            "p.yaml:6:13: port 0 is not a valid port (ports are 1-65535)",
            "p.yaml:6:16: port 70000 is out of range (ports are 1-65535)",
            "p.yaml:6:23: inverted port range \"90-80\" (low end above high end)",
            "p.yaml:8:11: duplicate rule name \"a\" (first used on line 2)",
            "p.yaml:9:16: \"sideways\" is not a direction (expected ingress or egress)",
            "p.yaml:11:5: unknown key \"colour\" in rule",
            "p.yaml:16:17: icmp_types apply to icmp and icmpv6 only",
            "p.yaml:21:12: ports apply to tcp and udp only",
            "p.yaml:25:13: unknown set @nope in remote",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, w) in e.iter().zip(want) {
            assert!(got.starts_with(w), "got {got:?}, want {w:?}");
        }
    }

    #[test]
    fn log_section_and_rule_log_flag() {
        let p = parse(
            "rules:\n  - { name: a, direction: ingress, action: deny, log: true }\n  - { name: b, direction: ingress, action: allow }\nlog: { drops: false, rate: 50, burst: 10, sample: 4, flow_rate: 7 }\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(p.rules[0].log && !p.rules[1].log);
        assert_eq!(
            p.logging,
            Logging {
                drops: false,
                rate: 50,
                burst: 10,
                sample: 4,
                flow_rate: 7
            }
        );
        assert_eq!(
            parse("rules: []\n", Path::new("p.yaml")).unwrap().logging,
            Logging::default()
        );
        let e = errs(
            "rules:\n  - { name: a, direction: ingress, action: deny, log: yes }\nlog:\n  rate: 0\n  drops: maybe\n  sampel: 3\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("p.yaml:2:55: \"yes\" is not true or false"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.yaml:4:9: \"0\" is not a whole number"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("p.yaml:5:10: \"maybe\" is not true or false"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("p.yaml:6:3: unknown key \"sampel\" in log"),
            "{e:?}"
        );
        assert!(errs("log: 5\nrules: []\n")[0].starts_with("p.yaml:1:6: log must be a mapping"));
    }

    #[test]
    fn conntrack_timeouts() {
        let p = parse(
            "conntrack: { tcp_timeout: 2h, udp_timeout: 90s, other_timeout: 30 }\nrules: []\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(
            p.timeouts,
            Timeouts {
                tcp: 7200,
                udp: 90,
                other: 30
            }
        );
        assert_eq!(
            parse("rules: []\n", Path::new("p.yaml")).unwrap().timeouts,
            Timeouts::default()
        );
        let e = errs("conntrack:\n  tcp_timeout: 0\n  udp: 5\n");
        assert!(
            e[0].starts_with("p.yaml:2:16: \"0\" is not a duration"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.yaml:3:3: unknown key \"udp\" in conntrack"),
            "{e:?}"
        );
    }

    #[test]
    fn yaml_syntax_and_top_level_errors() {
        let e = errs("rules: [\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p.yaml:2:1: YAML syntax error"), "{e:?}");
        let e = errs("rulez: []\ndefault: {ingress: maybe}\n");
        assert!(
            e[0].starts_with("p.yaml:1:1: unknown key \"rulez\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("p.yaml:2:20: \"maybe\" is not an action"),
            "{e:?}"
        );
        let e = errs("rules: []\nrules: []\n");
        assert!(e[0].contains("duplicate key \"rules\""), "{e:?}");
    }

    #[test]
    fn set_file_errors_name_the_set_file() {
        let tmp = tempfile::Builder::new()
            .prefix("moat-set-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("s.txt"), "10.0.0.0/8\n  10.0.0.1/8\nbanana\n").unwrap();
        let pol = dir.join("p.yaml");
        let text = "sets:\n  s: { file: s.txt }\n  t: { file: missing.txt }\n";
        let e = parse(text, &pol).unwrap_err();
        let e: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert!(
            e[0].starts_with(&format!("{}:3:14: cannot read set file", pol.display())),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(&format!(
                "{}:2:3: \"10.0.0.1/8\" has host bits set",
                dir.join("s.txt").display()
            )),
            "{e:?}"
        );
        assert!(
            e[2].starts_with(&format!(
                "{}:3:1: \"banana\" is not",
                dir.join("s.txt").display()
            )),
            "{e:?}"
        );
    }

    /// Policies that are not what they look like are refused, each with a
    /// location: nothing that is cut short, empty or hidden passes for a policy.
    #[test]
    fn policies_that_are_not_what_they_look_like_are_refused() {
        let one = |text: &str| -> String {
            let e = parse(text, Path::new("p.yaml")).expect_err(text);
            assert_eq!(e.total(), 1, "{text:?}: {e}");
            e.to_string()
        };
        for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
            assert!(
                one(empty).starts_with("p.yaml:1:1: the policy is empty"),
                "{empty:?}"
            );
        }
        // Defaults alone are fine only with an explicit rules list.
        assert!(
            one("default: { ingress: allow, egress: allow }\n")
                .starts_with("p.yaml:1:1: the policy has no `rules:` key")
        );
        parse(
            "default: { ingress: allow, egress: allow }\nrules: []\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        // A leading `---` is one document; a second one is refused.
        parse("---\nrules: []\n", Path::new("p.yaml")).unwrap();
        assert!(
            one("default: { ingress: deny }\nrules: []\n---\nrules: []\n")
                .starts_with("p.yaml:3:1: a second YAML document")
        );
        assert!(
            one("default: { ingress: deny }\nrules: []\n...\nsets: {}\n")
                .starts_with("p.yaml:3:1: a YAML document end marker")
        );
        // An indented first key: a dedent would end the document early.
        let e = one(
            "  default: { ingress: deny }\nrules:\n  - { name: a, direction: ingress, action: allow }\n",
        );
        assert!(
            e.starts_with("p.yaml:1:3: top-level keys must start in column 1"),
            "{e}"
        );
        // NUL bytes: everything after one would be dropped.
        assert!(
            one("default: { ingress: deny }\nrules: []\x00\nsets: {}\n")
                .starts_with("p.yaml:2:10: the policy contains a NUL byte")
        );
    }

    #[test]
    fn error_output_is_bounded() {
        // A huge value: the message quotes its start only.
        let big = "x".repeat(10 << 20);
        let text = format!("rules:\n  - name: a\n    direction: {big}\n    action: allow\n");
        let e = parse(&text, Path::new("p.yaml")).unwrap_err().to_string();
        assert!(e.len() < 1000, "{} bytes of error", e.len());
        assert!(e.starts_with("p.yaml:3:16: \"xxxx"), "{}", &e[..100]);
        assert!(e.contains("characters)"), "{e}");
        // 200k bad ports: the first errors and a count.
        let ports = vec!["0"; 200_000].join(", ");
        let text = format!(
            "rules:\n  - name: a\n    direction: ingress\n    action: allow\n    proto: tcp\n    ports: [{ports}]\n"
        );
        let e = parse(&text, Path::new("p.yaml")).unwrap_err();
        assert_eq!(e.total(), 200_000);
        assert!(e.0.len() <= MAX_ERRORS_KEPT);
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), MAX_ERRORS_SHOWN + 1, "{shown}");
        assert!(
            shown.ends_with("... and 199980 more error(s) not shown"),
            "{shown}"
        );
    }

    #[test]
    fn policy_and_set_files_must_be_regular_bounded_utf8() {
        let dir = std::env::temp_dir().join(format!("moat-polfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        let msg = |p: &Path| load(p).unwrap_err().to_string();
        // Devices and FIFOs: refused without reading (no hang, no memory).
        assert!(
            msg(Path::new("/dev/null"))
                .contains("must be a regular file, this is a character device")
        );
        assert!(
            msg(Path::new("/dev/zero"))
                .contains("must be a regular file, this is a character device")
        );
        let fifo = dir.join("fifo.yaml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid C string.
        assert_eq!(unsafe { libc_mkfifo(c.as_ptr()) }, 0);
        assert!(msg(&fifo).contains("must be a regular file, this is a FIFO"));
        assert!(msg(&dir).contains("this is a directory"));
        // Not UTF-8: line and column of the bad byte.
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, b"rules: []\ndefault: { ingress: d\xffeny }\n").unwrap();
        let m = msg(&bad);
        assert!(
            m.starts_with(&format!(
                "{}:2:22: policy file is not UTF-8 text (byte 0xff)",
                bad.display()
            )),
            "{m}"
        );
        // Too big.
        let huge = dir.join("huge.yaml");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(MAX_POLICY_BYTES + 1).unwrap();
        assert!(msg(&huge).contains("more than the limit"), "{}", msg(&huge));
        // A set file that is a device.
        let pol = dir.join("p.yaml");
        std::fs::write(&pol, "rules: []\nsets:\n  s: { file: /dev/zero }\n").unwrap();
        let m = msg(&pol);
        assert!(
            m.starts_with(&format!(
                "{}:3:14: set file /dev/zero must be a regular file",
                pol.display()
            )),
            "{m}"
        );
    }
}
