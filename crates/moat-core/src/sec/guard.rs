//! `moat guard` policies, the pure part: the YAML checked (FILE:LINE:COL),
//! each rule's enforcing mechanism chosen (or the rule refused with the
//! reason), and the rules compiled into the kernel's tables (abi/sec.h:
//! one bit per rule in every mask) and into the matcher userspace uses for
//! what fanotify decides (opens, exec denies).
//!
//! ```yaml
//! rules:
//!   - name: no-shell-from-web
//!     on: exec
//!     match: { binary: [/bin/sh, /bin/bash], ancestor: [/usr/sbin/nginx] }
//!     action: kill
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use marked_yaml::Node;
use moat_abi::sec as abi;
use serde::Serialize;

use crate::{
    fw::{
        addr::Cidr,
        policy::{
            PolicyError as ConfigError, PolicyErrors as ConfigErrors,
            parser::{node_pos, pos},
        },
    },
    yaml::{At, Walker},
};

/// Largest policy file read.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum On {
    Exec,
    Open,
    Connect,
    Listen,
    Setuid,
    Ptrace,
}

impl On {
    pub fn name(self) -> &'static str {
        match self {
            On::Exec => "exec",
            On::Open => "open",
            On::Connect => "connect",
            On::Listen => "listen",
            On::Setuid => "setuid",
            On::Ptrace => "ptrace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Log,
    Deny,
    Kill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Deny => "deny",
            Action::Kill => "kill",
        }
    }
    pub fn abi(self) -> u32 {
        match self {
            Action::Log => abi::ACT_LOG,
            Action::Deny => abi::ACT_DENY,
            Action::Kill => abi::ACT_KILL,
        }
    }
    pub fn of_abi(a: u32) -> Option<Action> {
        match a {
            abi::ACT_LOG => Some(Action::Log),
            abi::ACT_DENY => Some(Action::Deny),
            abi::ACT_KILL => Some(Action::Kill),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Any,
}

/// An absolute path; `prefix` when it was written with a trailing `/`
/// (everything below that directory).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PathPat {
    pub path: String,
    pub prefix: bool,
}

impl PathPat {
    /// True if `p` (an absolute, resolved path) is this one or below it.
    pub fn matches(&self, p: &str) -> bool {
        if self.prefix {
            p.starts_with(&self.path)
        } else {
            p == self.path
        }
    }
    /// What is stat'ed for the kernel's inode table: the file, or the
    /// directory of a prefix (without the trailing `/`, except for `/`).
    pub fn stat_path(&self) -> &str {
        if self.prefix && self.path.len() > 1 {
            &self.path[..self.path.len() - 1]
        } else {
            &self.path
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub at: At,
    pub on: On,
    pub action: Action,
    pub binary: Vec<PathPat>,
    pub not_binary: Vec<PathPat>,
    pub ancestor: Vec<PathPat>,
    pub path: Vec<PathPat>,
    pub access: Access,
    pub cgroup: Option<PathBuf>,
    pub remote: Vec<Cidr>,
    pub remote_not: Vec<Cidr>,
    /// listen: local ports (empty: any).
    pub port: Vec<u16>,
    pub memfd: bool,
    /// The process has a controlling terminal.
    pub tty: bool,
}

#[derive(Clone, Debug)]
pub struct GuardPolicy {
    pub source: PathBuf,
    pub rules: Vec<Rule>,
}

/// How a rule is enforced on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// tp_btf/sched_process_exec (log; kill with bpf_send_signal).
    ExecTracepoint,
    /// fanotify FAN_OPEN_EXEC_PERM on the binaries' filesystems.
    FanotifyExec,
    /// fanotify FAN_OPEN_PERM on the paths.
    FanotifyOpen,
    /// cgroup/connect4 and cgroup/connect6 at the cgroup v2 root.
    CgroupConnect,
    /// tracepoint syscalls/sys_enter_connect + bpf_send_signal.
    ConnectTracepoint,
    /// tracepoints syscalls/sys_enter_set*id, sys_enter_capset.
    SetidTracepoint,
    /// tracepoint syscalls/sys_enter_ptrace.
    PtraceTracepoint,
    /// cgroup/post_bind4 and post_bind6 at the cgroup v2 root (at bind).
    CgroupBind,
    /// tracepoint syscalls/sys_enter_bind + bpf_send_signal.
    BindTracepoint,
}

impl Mechanism {
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::ExecTracepoint => "tp_btf/sched_process_exec (+ bpf_send_signal)",
            Mechanism::FanotifyExec => "fanotify FAN_OPEN_EXEC_PERM",
            Mechanism::FanotifyOpen => "fanotify FAN_OPEN_PERM",
            Mechanism::CgroupConnect => "cgroup/connect4 + cgroup/connect6",
            Mechanism::ConnectTracepoint => "tracepoint sys_enter_connect + bpf_send_signal",
            Mechanism::SetidTracepoint => {
                "tracepoints sys_enter_set*id, capset (+ bpf_send_signal)"
            }
            Mechanism::PtraceTracepoint => "tracepoint sys_enter_ptrace (+ bpf_send_signal)",
            Mechanism::CgroupBind => "cgroup/post_bind4 + post_bind6 (at bind)",
            Mechanism::BindTracepoint => "tracepoint sys_enter_bind + bpf_send_signal",
        }
    }
    /// Decided in userspace (a fanotify answer), not in the kernel.
    pub fn in_userspace(self) -> bool {
        matches!(self, Mechanism::FanotifyExec | Mechanism::FanotifyOpen)
    }
}

/// The mechanism that enforces `r` here, or why none can. BPF LSM would
/// serve deny for every operation, but this kernel refuses LSM programs at
/// load (lockdown), so the choice is among what loads.
pub fn mechanism(r: &Rule) -> Result<Mechanism, String> {
    match (r.on, r.action) {
        (On::Exec, Action::Log | Action::Kill) => Ok(Mechanism::ExecTracepoint),
        (On::Exec, Action::Deny) => {
            if r.memfd {
                Err("exec of a memfd cannot be denied here: fanotify does not see memfd execs and BPF LSM does not load; use action: kill".into())
            } else if r.binary.is_empty() {
                Err("exec deny needs `binary:` (fanotify marks the binaries' filesystems); use action: kill to stop any exec".into())
            } else {
                Ok(Mechanism::FanotifyExec)
            }
        }
        (On::Open, _) => Ok(Mechanism::FanotifyOpen),
        (On::Connect, Action::Log | Action::Deny) => Ok(Mechanism::CgroupConnect),
        (On::Connect, Action::Kill) => Ok(Mechanism::ConnectTracepoint),
        (On::Setuid, Action::Log | Action::Kill) => Ok(Mechanism::SetidTracepoint),
        (On::Ptrace, Action::Log | Action::Kill) => Ok(Mechanism::PtraceTracepoint),
        (On::Setuid | On::Ptrace, Action::Deny) => Err(format!(
            "{} cannot be denied on this kernel: BPF LSM is refused at load and bpf_override_return is not allowed; use action: kill (SIGKILL at the syscall) or log",
            r.on.name()
        )),
        (On::Listen, Action::Log | Action::Deny) => Ok(Mechanism::CgroupBind),
        (On::Listen, Action::Kill) => Ok(Mechanism::BindTracepoint),
    }
}

/// True if the open pattern `p` covers any of the directories `dirs`
/// (given with a trailing `/`) or anything below them.
pub fn covers_any(p: &PathPat, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| {
        let inside = p.path.starts_with(d) || format!("{}/", p.path) == *d;
        let above = p.prefix && d.starts_with(&p.path);
        inside || above
    })
}

/// Reads and checks a guard policy file.
pub fn load(path: &Path) -> Result<GuardPolicy, ConfigErrors> {
    match crate::fw::policy::read_text(path, "guard policy", MAX_POLICY_BYTES) {
        Ok(text) => parse(&text, path),
        Err((l, c, msg)) => Err(ConfigErrors::one(path, l, c, msg)),
    }
}

/// Checks policy text (`path` names it in errors), mechanisms included: a
/// rule this kernel cannot enforce is an error at its line.
pub fn parse(text: &str, path: &Path) -> Result<GuardPolicy, ConfigErrors> {
    let mut w = Walker::new(path);
    let p = policy(&mut w, text);
    if let Some(p) = &p {
        for r in &p.rules {
            if let Err(why) = mechanism(r) {
                w.err(r.at, format!("rule {:?}: {why}", r.name));
            }
            if r.on == On::Open
                && let Some(bad) = r
                    .path
                    .iter()
                    .find(|pp| covers_any(pp, &["/proc/", "/sys/"]))
            {
                w.err(
                    r.at,
                    format!(
                        "rule {:?}: open rules cannot cover {} (/proc and /sys): the enforcer reads them to decide and would wait on itself",
                        r.name, bad.path
                    ),
                );
            }
        }
    }
    match p {
        Some(p) if w.total == 0 => Ok(p),
        _ => Err(ConfigErrors(std::mem::take(&mut w.errors), w.total)),
    }
}

fn policy(w: &mut Walker, text: &str) -> Option<GuardPolicy> {
    let root = w.root(text, "the guard policy must be a mapping with `rules:`")?;
    let map = root.as_mapping()?;
    let mut rules_node = None;
    for (k, v) in map.iter() {
        match k.as_str() {
            "rules" => rules_node = Some(v),
            other => w.err(
                pos(k.span()),
                format!("unknown key {other:?} (expected rules)"),
            ),
        }
    }
    let Some(rn) = rules_node else {
        w.err(
            (1, 1),
            "no `rules:`; a guard policy lists its rules (an empty or cut-short file must not pass for one)",
        );
        return None;
    };
    let mut rules = Vec::new();
    let mut names: HashMap<String, At> = HashMap::new();
    match rn {
        Node::Sequence(s) => {
            for n in s.iter() {
                if let Some(r) = rule(w, n) {
                    if let Some(first) = names.get(&r.name) {
                        w.err(
                            r.at,
                            format!(
                                "rule name {:?} is used twice (first at line {})",
                                r.name, first.0
                            ),
                        );
                    } else {
                        names.insert(r.name.clone(), r.at);
                        rules.push(r);
                    }
                }
            }
        }
        _ => w.err(node_pos(rn), "rules must be a list"),
    }
    if rules.len() > abi::RULES_MAX {
        w.err(
            node_pos(rn),
            format!(
                "{} rules; at most {} per policy",
                rules.len(),
                abi::RULES_MAX
            ),
        );
    }
    Some(GuardPolicy {
        source: w.file.clone(),
        rules,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn path_pat(w: &mut Walker, n: &Node, key: &str) -> Option<PathPat> {
    let s = w.scalar(n, "an absolute path")?;
    if !s.starts_with('/') {
        w.err(
            node_pos(n),
            format!("{key}: {s:?} is not an absolute path (paths start with /)"),
        );
        return None;
    }
    if s.len() >= abi::PATH_MAX {
        w.err(
            node_pos(n),
            format!("{key}: longer than {} bytes", abi::PATH_MAX - 1),
        );
        return None;
    }
    if s.split('/').any(|c| c == "." || c == "..") || s.contains("//") || s.contains('\0') {
        w.err(
            node_pos(n),
            format!("{key}: {s:?} is not a normal path (no ., .. or //)"),
        );
        return None;
    }
    Some(PathPat {
        path: s.to_string(),
        prefix: s.ends_with('/'),
    })
}

fn rule(w: &mut Walker, n: &Node) -> Option<Rule> {
    let at = node_pos(n);
    let m = w.mapping(n, "a rule")?;
    let before = w.total;
    let (mut name, mut on, mut action, mut mat) = (None, None, None, None);
    for (k, v) in m.iter() {
        match k.as_str() {
            "name" => {
                if let Some(s) = w.scalar(v, "a rule name") {
                    if valid_name(s) {
                        name = Some(s.to_string());
                    } else {
                        w.err(
                            node_pos(v),
                            format!("rule name {s:?}: letters, digits, - _ . (at most 63)"),
                        );
                    }
                }
            }
            "on" => {
                if let Some(s) = w.scalar(v, "an operation") {
                    on = match s {
                        "exec" => Some(On::Exec),
                        "open" => Some(On::Open),
                        "connect" => Some(On::Connect),
                        "listen" => Some(On::Listen),
                        "setuid" => Some(On::Setuid),
                        "ptrace" => Some(On::Ptrace),
                        _ => {
                            w.err(
                                node_pos(v),
                                format!(
                                    "on: {s:?} (expected exec, open, connect, listen, setuid, ptrace)"
                                ),
                            );
                            None
                        }
                    };
                }
            }
            "action" => {
                if let Some(s) = w.scalar(v, "an action") {
                    action = match s {
                        "log" => Some(Action::Log),
                        "deny" => Some(Action::Deny),
                        "kill" => Some(Action::Kill),
                        _ => {
                            w.err(
                                node_pos(v),
                                format!("action: {s:?} (expected log, deny, kill)"),
                            );
                            None
                        }
                    };
                }
            }
            "match" => mat = Some(v),
            other => w.err(
                pos(k.span()),
                format!("unknown key {other:?} in a rule (expected name, on, match, action)"),
            ),
        }
    }
    for (ok, key) in [
        (name.is_some(), "name"),
        (on.is_some(), "on"),
        (action.is_some(), "action"),
    ] {
        if !ok && w.total == before {
            w.err(at, format!("the rule has no `{key}:`"));
        }
    }
    let (name, on, action) = (name?, on?, action?);
    let mut r = Rule {
        name,
        at,
        on,
        action,
        binary: vec![],
        not_binary: vec![],
        ancestor: vec![],
        path: vec![],
        access: Access::Any,
        cgroup: None,
        remote: vec![],
        remote_not: vec![],
        port: vec![],
        memfd: false,
        tty: false,
    };
    if let Some(mn) = mat {
        let mm = w.mapping(mn, "match")?;
        for (k, v) in mm.iter() {
            let key = k.as_str();
            let allowed: &[On] = match key {
                "binary" | "not_binary" | "ancestor" | "cgroup" | "tty" => &[
                    On::Exec,
                    On::Open,
                    On::Connect,
                    On::Listen,
                    On::Setuid,
                    On::Ptrace,
                ],
                "path" | "access" => &[On::Open],
                "remote" | "remote_not" => &[On::Connect],
                "port" => &[On::Listen],
                "memfd" => &[On::Exec],
                _ => {
                    w.err(pos(k.span()), format!("unknown key {key:?} in match (expected binary, not_binary, ancestor, cgroup, tty, path, access, remote, remote_not, port, memfd)"));
                    continue;
                }
            };
            if !allowed.contains(&on) {
                w.err(
                    pos(k.span()),
                    format!("match: {key} does not apply to on: {}", on.name()),
                );
                continue;
            }
            match key {
                "binary" | "not_binary" | "ancestor" | "path" => {
                    let mut v2 = Vec::new();
                    for n in w.list(v) {
                        if let Some(p) = path_pat(w, n, key) {
                            v2.push(p);
                        }
                    }
                    match key {
                        "binary" => r.binary = v2,
                        "not_binary" => r.not_binary = v2,
                        "ancestor" => r.ancestor = v2,
                        _ => r.path = v2,
                    }
                }
                "cgroup" => {
                    if let Some(s) = w.scalar(v, "a cgroup v2 directory") {
                        if s.starts_with('/') && !s.split('/').any(|c| c == "..") {
                            r.cgroup = Some(PathBuf::from(s));
                        } else {
                            w.err(
                                node_pos(v),
                                format!("cgroup: {s:?} is not an absolute directory"),
                            );
                        }
                    }
                }
                "access" => {
                    if let Some(s) = w.scalar(v, "read, write or any") {
                        r.access = match s {
                            "read" => Access::Read,
                            "write" => Access::Write,
                            "any" => Access::Any,
                            _ => {
                                w.err(
                                    node_pos(v),
                                    format!("access: {s:?} (expected read, write, any)"),
                                );
                                Access::Any
                            }
                        };
                    }
                }
                "remote" | "remote_not" => {
                    let mut v2 = Vec::new();
                    for n in w.list(v) {
                        if let Some(s) = w.scalar(n, "an address or CIDR") {
                            match Cidr::parse(s) {
                                Ok(c) => v2.push(c),
                                Err(e) => w.err(node_pos(n), format!("{key}: {e}")),
                            }
                        }
                    }
                    if key == "remote" {
                        r.remote = v2;
                    } else {
                        r.remote_not = v2;
                    }
                }
                "port" => {
                    for n in w.list(v) {
                        if let Some(p) = w.number(n, "a port", 1, 65535) {
                            r.port.push(p as u16);
                        }
                    }
                }
                "memfd" | "tty" => {
                    if let Some(s) = w.scalar(v, "true or false") {
                        let b = match s {
                            "true" => true,
                            "false" => false,
                            _ => {
                                w.err(
                                    node_pos(v),
                                    format!("{key}: {s:?} (expected true or false)"),
                                );
                                false
                            }
                        };
                        if key == "tty" {
                            r.tty = b;
                        } else {
                            r.memfd = b;
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
    }
    if on == On::Open && r.path.is_empty() && w.total == before {
        w.err(
            at,
            format!(
                "rule {:?}: on: open needs match: path (the files or directories/ it covers)",
                r.name
            ),
        );
    }
    (w.total == before).then_some(r)
}

/// What the host resolves for the compiler.
pub trait Resolve {
    /// The inode of a file or directory (following links), if it exists.
    fn inode(&self, path: &str) -> Option<abi::SecInode>;
    /// A cgroup v2 directory's id and depth below the root.
    fn cgroup(&self, dir: &Path) -> Result<(u64, u32), String>;
}

/// The kernel's tables for a policy, and what userspace decides.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub guard: abi::SecGuard,
    pub files: HashMap<abi::SecInode, abi::SecMasks>,
    pub net4: Vec<(abi::SecNet4Key, abi::SecNet)>,
    pub net6: Vec<(abi::SecNet6Key, abi::SecNet)>,
    /// listen rules per local port.
    pub ports: HashMap<u16, u64>,
    /// Per rule (policy order): its mechanism.
    pub mechanisms: Vec<Mechanism>,
    /// Paths named by rules that do not exist here (they match nothing).
    pub missing: Vec<(String, String)>,
    /// Needed programs.
    pub exec: bool,
    pub connect: bool,
    pub connect_tp: bool,
    pub setid: bool,
    pub ptrace: bool,
    pub bind: bool,
    pub bind_tp: bool,
    pub fanotify: bool,
}

/// Compiles `p`. `log_only` (moat guard test): every action becomes log.
/// `scope`: an extra cgroup every rule is restricted to (moat guard test).
pub fn compile(
    p: &GuardPolicy,
    res: &dyn Resolve,
    log_only: bool,
    scope: Option<&Path>,
) -> Result<Compiled, String> {
    let mut c = Compiled::default();
    let mut files: HashMap<abi::SecInode, abi::SecMasks> = HashMap::new();
    let mut nets: BTreeMap<Cidr, (u64, u64)> = BTreeMap::new();
    for (i, r) in p.rules.iter().enumerate() {
        let bit = 1u64 << i;
        let m = mechanism(r).map_err(|e| format!("rule {:?}: {e}", r.name))?;
        c.mechanisms.push(m);
        let action = if log_only { Action::Log } else { r.action };
        match action {
            Action::Deny => c.guard.deny |= bit,
            Action::Kill => c.guard.kill |= bit,
            Action::Log => {}
        }
        let op = match m {
            Mechanism::ExecTracepoint => Some(abi::OP_EXEC),
            Mechanism::CgroupConnect => Some(abi::OP_CONNECT),
            Mechanism::ConnectTracepoint => Some(abi::OP_CONNECT_TP),
            Mechanism::SetidTracepoint => Some(abi::OP_SETID),
            Mechanism::PtraceTracepoint => Some(abi::OP_PTRACE),
            Mechanism::CgroupBind => Some(abi::OP_LISTEN),
            Mechanism::BindTracepoint => Some(abi::OP_LISTEN_TP),
            Mechanism::FanotifyExec | Mechanism::FanotifyOpen => None,
        };
        if let Some(op) = op {
            c.guard.op[op] |= bit;
        }
        match m {
            Mechanism::ExecTracepoint => c.exec = true,
            Mechanism::CgroupConnect => c.connect = true,
            Mechanism::ConnectTracepoint => c.connect_tp = true,
            Mechanism::SetidTracepoint => c.setid = true,
            Mechanism::PtraceTracepoint => c.ptrace = true,
            Mechanism::CgroupBind => c.bind = true,
            Mechanism::BindTracepoint => c.bind_tp = true,
            Mechanism::FanotifyExec | Mechanism::FanotifyOpen => c.fanotify = true,
        }
        if !r.port.is_empty() {
            c.guard.need_port |= bit;
            for p in &r.port {
                *c.ports.entry(*p).or_default() |= bit;
            }
        }
        for (list, which) in [(&r.binary, 0), (&r.not_binary, 1), (&r.ancestor, 2)] {
            for pat in list {
                match res.inode(pat.stat_path()) {
                    Some(ino) => {
                        let e = files.entry(ino).or_default();
                        match which {
                            0 => e.bin |= bit,
                            1 => e.notbin |= bit,
                            _ => e.anc |= bit,
                        }
                    }
                    None => c.missing.push((r.name.clone(), pat.path.clone())),
                }
            }
        }
        if !r.binary.is_empty() {
            c.guard.need_bin |= bit;
        }
        if !r.ancestor.is_empty() {
            c.guard.need_anc |= bit;
        }
        if r.memfd {
            c.guard.need_memfd |= bit;
        }
        if r.tty {
            c.guard.need_tty |= bit;
        }
        if !r.remote.is_empty() {
            c.guard.need_remote |= bit;
        }
        let cg = scope.or(r.cgroup.as_deref());
        if let Some(dir) = cg {
            let (id, level) = res
                .cgroup(dir)
                .map_err(|e| format!("rule {:?}: cgroup {}: {e}", r.name, dir.display()))?;
            c.guard.need_cg |= bit;
            c.guard.cg_id[i] = id;
            c.guard.cg_level[i] = level;
        }
        for n in &r.remote {
            nets.entry(*n).or_default().0 |= bit;
        }
        for n in &r.remote_not {
            nets.entry(*n).or_default().1 |= bit;
        }
    }
    if files.len() > abi::FILES_MAX as usize {
        return Err(format!(
            "{} files and directories named; at most {}",
            files.len(),
            abi::FILES_MAX
        ));
    }
    if c.ports.len() > abi::PORTS_MAX as usize {
        return Err(format!(
            "{} ports named; at most {}",
            c.ports.len(),
            abi::PORTS_MAX
        ));
    }
    if nets.len() > abi::NETS_MAX as usize {
        return Err(format!(
            "{} networks named; at most {}",
            nets.len(),
            abi::NETS_MAX
        ));
    }
    // Each stored prefix carries the rules of every prefix that covers it:
    // the LPM lookup returns only the longest.
    let all: Vec<(Cidr, (u64, u64))> = nets.into_iter().collect();
    for (p, _) in &all {
        let (mut inm, mut notm) = (0, 0);
        for (q, (a, b)) in &all {
            if q.is_v4() == p.is_v4() && q.covers(p) {
                inm |= a;
                notm |= b;
            }
        }
        let v = abi::SecNet {
            remote: inm,
            remote_not: notm,
        };
        match (*p, p.network()) {
            (Cidr::V4(_, l), IpAddr::V4(a)) => c.net4.push((
                abi::SecNet4Key {
                    prefixlen: l as u32,
                    addr: a.octets(),
                },
                v,
            )),
            (Cidr::V6(_, l), IpAddr::V6(a)) => c.net6.push((
                abi::SecNet6Key {
                    prefixlen: l as u32,
                    addr: a.octets(),
                },
                v,
            )),
            _ => {}
        }
    }
    c.files = files;
    Ok(c)
}

/// The guard masks of an image: a file's own entry and those of its
/// directories on its filesystem (the kernel walks the same way).
pub fn masks_of(c: &Compiled, chain: &[abi::SecInode]) -> abi::SecMasks {
    let mut m = abi::SecMasks::default();
    for k in chain {
        if let Some(e) = c.files.get(k) {
            m.bin |= e.bin;
            m.notbin |= e.notbin;
            m.anc |= e.anc;
        }
    }
    m
}

/// What userspace knows about an operation fanotify holds.
#[derive(Clone, Debug, Default)]
pub struct Op<'a> {
    /// The file's resolved path.
    pub path: &'a str,
    pub read: bool,
    pub write: bool,
    /// Masks of the image doing it (for an exec: of the new binary).
    pub bin: u64,
    pub notbin: u64,
    pub anc: u64,
    /// The process's cgroup v2 path below the root (`/web/x`).
    pub cgroup: &'a str,
    /// The process has a controlling terminal.
    pub tty: bool,
}

/// The rules (by index) among `which` that match `op`. `cg_rel` gives a
/// rule's cgroup as a path below the cgroup v2 root.
pub fn user_match(
    p: &GuardPolicy,
    which: &[usize],
    op: &Op,
    cg_rel: &dyn Fn(usize) -> Option<String>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for &i in which {
        let r = &p.rules[i];
        let bit = 1u64 << i;
        if r.on == On::Open {
            if !r.path.iter().any(|pp| pp.matches(op.path)) {
                continue;
            }
            let ok = match r.access {
                Access::Any => true,
                Access::Read => op.read,
                Access::Write => op.write,
            };
            if !ok {
                continue;
            }
        }
        if !r.binary.is_empty() && op.bin & bit == 0 {
            continue;
        }
        if op.notbin & bit != 0 {
            continue;
        }
        if !r.ancestor.is_empty() && op.anc & bit == 0 {
            continue;
        }
        if r.tty && !op.tty {
            continue;
        }
        if let Some(rel) = cg_rel(i) {
            let under = rel == "/"
                || op.cgroup == rel
                || op
                    .cgroup
                    .strip_prefix(rel.as_str())
                    .is_some_and(|t| t.starts_with('/'));
            if !under {
                continue;
            }
        }
        out.push(i);
    }
    out
}

/// The strongest action among matched rules, and the first rule with it.
pub fn strongest(p: &GuardPolicy, hit: &[usize], log_only: bool) -> Option<(usize, Action)> {
    let mut best: Option<(usize, Action)> = None;
    for &i in hit {
        let a = if log_only {
            Action::Log
        } else {
            p.rules[i].action
        };
        if best.is_none_or(|(_, b)| a > b) {
            best = Some((i, a));
        }
    }
    best
}

/// The distinct paths fanotify must watch, per kind.
pub fn fanotify_paths(p: &GuardPolicy) -> (Vec<PathPat>, Vec<PathPat>) {
    let (mut exec, mut open) = (Vec::new(), Vec::new());
    let (mut se, mut so) = (HashSet::new(), HashSet::new());
    for r in &p.rules {
        match mechanism(r) {
            Ok(Mechanism::FanotifyExec) => {
                for b in &r.binary {
                    if se.insert(b.clone()) {
                        exec.push(b.clone());
                    }
                }
            }
            Ok(Mechanism::FanotifyOpen) => {
                for b in &r.path {
                    if so.insert(b.clone()) {
                        open.push(b.clone());
                    }
                }
            }
            _ => {}
        }
    }
    (exec, open)
}

/// An error list from one message (for apply-time failures).
pub fn one_error(path: &Path, at: At, msg: String) -> ConfigErrors {
    ConfigErrors(
        vec![ConfigError {
            file: path.to_path_buf(),
            line: at.0,
            col: at.1,
            msg,
        }],
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl Resolve for Fake {
        fn inode(&self, path: &str) -> Option<abi::SecInode> {
            (!path.contains("missing")).then(|| abi::SecInode {
                ino: path.len() as u64 * 1000 + path.bytes().map(u64::from).sum::<u64>(),
                dev: 1,
                pad: 0,
            })
        }
        fn cgroup(&self, dir: &Path) -> Result<(u64, u32), String> {
            Ok((
                dir.as_os_str().len() as u64,
                dir.components().count() as u32,
            ))
        }
    }

    const GOOD: &str = "rules:
  - name: no-shell-from-web
    on: exec
    match:
      binary: [/bin/sh, /bin/bash]
      ancestor: [/usr/sbin/nginx]
    action: kill
  - name: secrets
    on: open
    match: { path: [/etc/shadow, \"/root/.ssh/\"], access: read, not_binary: [/usr/sbin/sshd] }
    action: deny
  - name: web-egress
    on: connect
    match: { cgroup: /sys/fs/cgroup/unified/web, remote_not: [10.0.0.0/8, 10.1.0.0/16] }
    action: deny
";

    #[test]
    fn the_issue_example_parses_and_compiles() {
        let p = parse(GOOD, Path::new("guard.yaml")).unwrap();
        assert_eq!(p.rules.len(), 3);
        assert!(p.rules[1].path[1].prefix);
        let c = compile(&p, &Fake, false, None).unwrap();
        assert_eq!(c.guard.op[abi::OP_EXEC], 1);
        assert_eq!(c.guard.op[abi::OP_CONNECT], 4);
        assert_eq!(c.guard.kill, 1);
        assert_eq!(c.guard.deny, 6);
        assert_eq!(c.guard.need_bin, 1);
        assert_eq!(c.guard.need_anc, 1);
        assert_eq!(c.guard.need_cg, 4);
        assert_eq!(
            c.mechanisms,
            vec![
                Mechanism::ExecTracepoint,
                Mechanism::FanotifyOpen,
                Mechanism::CgroupConnect
            ]
        );
        // 10.1/16 inherits 10/8's rule.
        let k = c.net4.iter().find(|(k, _)| k.prefixlen == 16).unwrap();
        assert_eq!(k.1.remote_not, 4);
        // log-only turns every action into log.
        let t = compile(&p, &Fake, true, Some(Path::new("/t"))).unwrap();
        assert_eq!(t.guard.deny | t.guard.kill, 0);
        assert_eq!(t.guard.need_cg, 7);
    }

    #[test]
    fn errors_name_line_and_column() {
        let bad = "rules:\n  - name: x\n    on: exec\n    match: { binary: [bin/sh] }\n    action: deny\n";
        let e = parse(bad, Path::new("g.yaml")).unwrap_err();
        assert!(e.0[0].to_string().starts_with("g.yaml:4:"), "{e:?}");
        let ok = "rules:\n  - name: l\n    on: listen\n    match: { port: [22, 8080] }\n    action: deny\n";
        let p = parse(ok, Path::new("g.yaml")).unwrap();
        let c = compile(&p, &Fake, false, None).unwrap();
        assert_eq!(c.ports.get(&8080), Some(&1));
        assert_eq!(c.guard.op[abi::OP_LISTEN], 1);
        let bad =
            "rules:\n  - name: l\n    on: listen\n    match: { port: [0] }\n    action: deny\n";
        assert!(parse(bad, Path::new("g.yaml")).is_err());
        let bad = "rules:\n  - name: x\n    on: setuid\n    action: deny\n";
        let e = parse(bad, Path::new("g.yaml")).unwrap_err();
        assert!(e.0[0].to_string().contains("cannot be denied"), "{e:?}");
        assert!(e.0[0].to_string().starts_with("g.yaml:2:"), "{e:?}");
        let bad =
            "rules:\n  - name: x\n    on: exec\n    match: { path: [/etc/x] }\n    action: log\n";
        let e = parse(bad, Path::new("g.yaml")).unwrap_err();
        assert!(e.0[0].to_string().contains("does not apply"), "{e:?}");
        assert!(parse("", Path::new("g.yaml")).is_err());
        for p in ["\"/\"", "/proc/self/status", "\"/sys/\""] {
            let bad = format!(
                "rules:\n  - name: x\n    on: open\n    match: {{ path: [{p}] }}\n    action: log\n"
            );
            let e = parse(&bad, Path::new("g.yaml")).unwrap_err();
            assert!(e.0[0].to_string().contains("would wait on itself"), "{e:?}");
        }
        assert!(parse("rules: []\nextra: 1\n", Path::new("g.yaml")).is_err());
        let dup =
            "rules:\n  - {name: a, on: exec, action: log}\n  - {name: a, on: exec, action: log}\n";
        let e = parse(dup, Path::new("g.yaml")).unwrap_err();
        assert!(e.0[0].to_string().contains("used twice"), "{e:?}");
    }

    #[test]
    fn tty_is_a_process_condition() {
        let y = "rules:\n  - name: t\n    on: exec\n    match: { tty: true }\n    action: log\n";
        let p = parse(y, Path::new("g.yaml")).unwrap();
        assert!(p.rules[0].tty);
        let none = |_: usize| None;
        let mut op = Op::default();
        assert!(user_match(&p, &[0], &op, &none).is_empty());
        op.tty = true;
        assert_eq!(user_match(&p, &[0], &op, &none), vec![0]);
        let bad = y.replace("tty: true", "tty: maybe");
        let e = parse(&bad, Path::new("g.yaml")).unwrap_err();
        assert!(
            e.0[0]
                .to_string()
                .contains("tty: \"maybe\" (expected true or false)"),
            "{e:?}"
        );
    }

    #[test]
    fn user_matching_follows_paths_access_and_masks() {
        let p = parse(GOOD, Path::new("guard.yaml")).unwrap();
        let none = |_: usize| None;
        let mut op = Op {
            path: "/root/.ssh/id_rsa",
            read: true,
            ..Default::default()
        };
        assert_eq!(user_match(&p, &[1], &op, &none), vec![1]);
        op.read = false;
        op.write = true;
        assert!(user_match(&p, &[1], &op, &none).is_empty());
        op.read = true;
        op.notbin = 2; // sshd
        assert!(user_match(&p, &[1], &op, &none).is_empty());
        op.notbin = 0;
        op.path = "/etc/shadow-";
        assert!(user_match(&p, &[1], &op, &none).is_empty());
        let cg = |_: usize| Some("/web".to_string());
        op.path = "/etc/shadow";
        op.cgroup = "/webx";
        assert!(user_match(&p, &[1], &op, &cg).is_empty());
        op.cgroup = "/web/a";
        assert_eq!(user_match(&p, &[1], &op, &cg), vec![1]);
    }
}
