//! Runtime security, the pure part: exec ids, process records, events as
//! values, the lineage (ancestors) of a process image, and the parsing of
//! /proc/PID/stat. The kernel side (bpf/sec/sec.bpf.c) keeps the process
//! table and emits exec and exit events; moat-host reads them.

pub mod guard;

use std::collections::HashMap;

use moat_abi::sec as abi;
use serde::Serialize;

/// One process image: `pid:ns` (ns: boot clock of the exec, or the start
/// time rounded to /proc's 10 ms for processes known from /proc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xid {
    pub pid: u32,
    pub ns: u64,
}

impl Xid {
    pub fn of(x: &abi::SecXid) -> Xid {
        Xid {
            pid: x.pid,
            ns: x.ns,
        }
    }
    pub fn abi(&self) -> abi::SecXid {
        abi::SecXid {
            ns: self.ns,
            pid: self.pid,
            pad: 0,
        }
    }
    /// The exec id of a process that started `start_ticks` (/proc's
    /// starttime, USER_HZ) after boot.
    pub fn from_start_ticks(pid: u32, start_ticks: u64) -> Xid {
        Xid {
            pid,
            ns: start_ticks * abi::XID_TICK_NS,
        }
    }
    pub fn is_zero(&self) -> bool {
        self.pid == 0 && self.ns == 0
    }
}

impl std::fmt::Display for Xid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.ns)
    }
}

impl Serialize for Xid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A NUL-terminated C string from a fixed buffer.
pub fn cstr(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// NUL-separated arguments.
pub fn split_args(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return vec![];
    }
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// What /proc/PID/stat says that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    /// It has a controlling terminal (tty_nr, field 7, not 0).
    pub tty: bool,
}

/// Parses /proc/PID/stat (the comm is in parentheses and may hold spaces
/// and parentheses itself: the last `)` ends it).
pub fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let pid = s[..open].trim().parse().ok()?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), ... starttime is field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start_ticks = rest.get(19)?.parse().ok()?;
    let tty = rest.get(4)?.parse::<i64>().ok()? != 0;
    Some(Stat {
        pid,
        comm,
        ppid,
        start_ticks,
        tty,
    })
}

/// One process image as the lineage knows it.
#[derive(Clone, Debug)]
pub struct Node {
    pub pid: u32,
    pub binary: String,
    pub parent: Xid,
    pub exited: bool,
    /// cgroup v2 id (0: unknown).
    pub cgroup: u64,
}

/// Exec id -> image, for ancestors: kept from /proc at start and from the
/// exec events since (an image stays after it exits while it may still be
/// someone's ancestor; the oldest exited ones go first past `cap`).
#[derive(Default)]
pub struct Lineage {
    nodes: HashMap<Xid, Node>,
    exited: std::collections::VecDeque<Xid>,
    cap: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    pub exec_id: Xid,
    pub pid: u32,
    pub binary: String,
}

impl Lineage {
    pub fn new(cap: usize) -> Lineage {
        Lineage {
            cap,
            ..Default::default()
        }
    }
    pub fn insert(&mut self, xid: Xid, node: Node) {
        self.nodes.insert(xid, node);
    }
    pub fn get(&self, xid: &Xid) -> Option<&Node> {
        self.nodes.get(xid)
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The image ended (its pid may be reused by a new image later).
    pub fn exited(&mut self, xid: Xid) {
        if let Some(n) = self.nodes.get_mut(&xid)
            && !n.exited
        {
            n.exited = true;
            self.exited.push_back(xid);
        }
        while self.nodes.len() > self.cap.max(1) {
            match self.exited.pop_front() {
                Some(old) => {
                    self.nodes.remove(&old);
                }
                None => break,
            }
        }
    }
    /// Ancestors from the parent up: to pid 1, an unknown image, or `max`.
    pub fn ancestors(&self, parent: Xid, max: usize) -> Vec<Ancestor> {
        self.ancestors_with(parent, max, 0, |_| None)
    }

    /// [`Lineage::ancestors`], asking `other` (e.g. the kernel's process
    /// table) for images this lineage has not seen (their exec events were
    /// filtered out in the kernel), and stopping after the first ancestor
    /// outside cgroup `within` (0: do not stop at cgroups).
    pub fn ancestors_with(
        &self,
        parent: Xid,
        max: usize,
        within: u64,
        other: impl Fn(Xid) -> Option<Node>,
    ) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let mut at = parent;
        while out.len() < max && !at.is_zero() {
            let found;
            let n = match self.nodes.get(&at) {
                Some(n) => n,
                None => match other(at) {
                    Some(n) => {
                        found = n;
                        &found
                    }
                    None => break,
                },
            };
            out.push(Ancestor {
                exec_id: at,
                pid: n.pid,
                binary: n.binary.clone(),
            });
            if n.pid <= 1 || n.parent == at {
                break;
            }
            if within != 0 && n.cgroup != 0 && n.cgroup != within {
                break; // the first one outside the event's cgroup
            }
            at = n.parent;
        }
        out
    }
}

/// A decoded event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub event: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub exec_id: Xid,
    pub parent_exec_id: Xid,
    pub ktime_ns: u64,
    pub binary: String,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    pub flags: Vec<&'static str>,
    /// Guard events: the rule's index in its policy (the caller names it).
    #[serde(skip)]
    pub rule_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// open: the path (as given to the syscall) and the access mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'static str>,
    /// connect: the remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// listen: the local address bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// setid: the syscall; ptrace: the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<u64>,
    /// setid: the first argument (the new id); ptrace: the target pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg: Option<u64>,
}

/// The access mode of open(2) flags: read, write or read_write.
pub fn open_access(flags: u64) -> &'static str {
    match flags & 3 {
        0 if flags & 0o1000 != 0 => "read_write", // O_RDONLY | O_TRUNC truncates
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

/// An event's address (connect: remote, listen: local).
fn addr_of(e: &abi::SecEvent) -> String {
    if e.family == 10 {
        std::net::Ipv6Addr::from(e.addr).to_string()
    } else {
        std::net::Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string()
    }
}

/// The event name of a kind.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        abi::EV_EXEC => "exec",
        abi::EV_EXIT => "exit",
        abi::EV_CONNECT => "connect",
        abi::EV_SETID => "setid",
        abi::EV_PTRACE => "ptrace",
        abi::EV_OPEN => "open",
        abi::EV_LISTEN => "listen",
        _ => "unknown",
    }
}

impl Event {
    pub fn decode(e: &abi::SecEvent) -> Event {
        let exec = e.kind == abi::EV_EXEC;
        let exit = e.kind == abi::EV_EXIT;
        let mut flags = Vec::new();
        for (bit, name) in [
            (abi::EF_ARGS_TRUNC, "args_truncated"),
            (abi::EF_NO_PARENT, "parent_from_task"),
            (abi::EF_MEMFD, "memfd_or_deleted"),
            (abi::EF_TTY, "tty"),
        ] {
            if e.flags & bit != 0 {
                flags.push(name);
            }
        }
        let n = (e.args_len as usize).min(abi::ARGS_MAX);
        Event {
            event: kind_name(e.kind),
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            exec_id: Xid::of(&e.xid),
            parent_exec_id: Xid::of(&e.parent),
            ktime_ns: e.ktime,
            binary: cstr(&e.binary),
            comm: cstr(&e.comm),
            args: exec.then(|| split_args(&e.args[..n])),
            path: (e.kind == abi::EV_OPEN && e.rule == 0).then(|| cstr(&e.args[..n])),
            access: (e.kind == abi::EV_OPEN && e.rule == 0).then_some(open_access(e.arg0)),
            uid: e.uid,
            gid: e.gid,
            cgroup_id: e.cgroup,
            exit_code: exit.then_some(e.exit_code),
            signal: exit.then_some(e.signal),
            flags,
            rule_index: (e.rule != 0).then(|| e.rule as usize - 1),
            action: (e.rule != 0).then_some(match e.action {
                abi::ACT_DENY => "deny",
                abi::ACT_KILL => "kill",
                _ => "log",
            }),
            remote: (e.kind == abi::EV_CONNECT).then(|| addr_of(e)),
            local: (e.kind == abi::EV_LISTEN).then(|| addr_of(e)),
            port: matches!(e.kind, abi::EV_CONNECT | abi::EV_LISTEN).then_some(e.port),
            syscall: matches!(e.kind, abi::EV_SETID | abi::EV_PTRACE).then_some(e.arg0),
            arg: matches!(e.kind, abi::EV_SETID | abi::EV_PTRACE).then_some(e.arg1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let s = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "my (odd) name");
        assert_eq!(st.ppid, 17);
        assert_eq!(st.start_ticks, 123456);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn ancestors_walk_to_pid_one_and_stop_at_unknowns() {
        let mut l = Lineage::new(10);
        let init = Xid { pid: 1, ns: 10 };
        let sh = Xid { pid: 50, ns: 500 };
        let sleep = Xid { pid: 50, ns: 900 }; // exec without fork: same pid
        l.insert(
            init,
            Node {
                pid: 1,
                binary: "/sbin/init".into(),
                parent: Xid::default(),
                exited: false,
                cgroup: 0,
            },
        );
        l.insert(
            sh,
            Node {
                pid: 50,
                binary: "/bin/sh".into(),
                parent: init,
                exited: false,
                cgroup: 0,
            },
        );
        l.insert(
            sleep,
            Node {
                pid: 50,
                binary: "/bin/sleep".into(),
                parent: sh,
                exited: false,
                cgroup: 0,
            },
        );
        let a = l.ancestors(sh, 10);
        assert_eq!(
            a.iter().map(|x| x.binary.as_str()).collect::<Vec<_>>(),
            ["/bin/sh", "/sbin/init"]
        );
        assert!(l.ancestors(Xid { pid: 9, ns: 9 }, 10).is_empty());
        // A cgroup boundary: the first ancestor outside the event's cgroup
        // (id 7) ends the chain.
        let mut l2 = Lineage::new(10);
        for (x, pid, bin, parent, cg) in [
            (init, 1, "/sbin/init", Xid::default(), 1),
            (Xid { pid: 40, ns: 40 }, 40, "/usr/sbin/svc", init, 1),
            (sh, 50, "/bin/sh", Xid { pid: 40, ns: 40 }, 7),
        ] {
            l2.insert(
                x,
                Node {
                    pid,
                    binary: bin.into(),
                    parent,
                    exited: false,
                    cgroup: cg,
                },
            );
        }
        let a = l2.ancestors_with(sh, 10, 7, |_| None);
        assert_eq!(
            a.iter().map(|x| x.pid).collect::<Vec<_>>(),
            vec![50, 40],
            "{a:?}"
        );
        assert_eq!(l2.ancestors_with(sh, 10, 0, |_| None).len(), 3);
        assert_eq!(l.ancestors(sleep, 1).len(), 1);
    }

    #[test]
    fn exited_images_are_dropped_oldest_first_past_the_cap() {
        let mut l = Lineage::new(2);
        for i in 0..4u32 {
            let x = Xid {
                pid: i + 2,
                ns: i as u64,
            };
            l.insert(
                x,
                Node {
                    pid: i + 2,
                    binary: "b".into(),
                    parent: Xid::default(),
                    exited: false,
                    cgroup: 0,
                },
            );
            l.exited(x);
        }
        assert_eq!(l.len(), 2);
        assert!(l.get(&Xid { pid: 5, ns: 3 }).is_some());
        assert!(l.get(&Xid { pid: 2, ns: 0 }).is_none());
    }

    #[test]
    fn args_split_on_nul() {
        assert_eq!(split_args(b"sh\0-c\0sleep 1\0"), ["sh", "-c", "sleep 1"]);
        assert!(split_args(b"").is_empty());
        assert_eq!(cstr(b"abc\0def"), "abc");
    }
}
