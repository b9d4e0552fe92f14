//! `moat watch --file` through fanotify: a mark on each watched file and on
//! every directory below each watched prefix, so the kernel reports the
//! opens of those files only and an open anywhere else costs nothing. (The
//! other way, a program on the sys_enter tracepoint, runs for every system
//! call of every process: on the openat+close loop of moat-bench it cost
//! 9-10% with an empty program, before reading a path; it stays the way for
//! what marks cannot cover, see [`OpenWatch::new`].)
//!
//! The marks ask for permission events (FAN_OPEN_PERM), always answered
//! "allow": the opener waits for the answer, so its open(2) flags can be
//! read from /proc/TID/syscall (a notification event does not carry them).
//! A watched open therefore costs a round trip through `moat watch`; if
//! `moat watch` ends, the kernel answers for it.

use std::{
    collections::HashSet,
    fs,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use moat_abi::sec as abi;

use super::{
    fan::{answer_all, fan_mark, mark_dirs, perm_group, walk_dirs},
    guard::{cgroup_of, cgroup2_root, open_access, tgid_of, user_event},
};

/// Directories a set of prefixes may mark; beyond it (a prefix like `/`),
/// the tracepoint serves the opens instead.
pub const MAX_DIRS: usize = 20_000;

/// Why the marks cannot serve a list of `--file` paths.
#[derive(Debug)]
pub enum NoMarks {
    /// The path does not exist (yet): only a path check can see it appear.
    Missing(String),
    /// More than [`MAX_DIRS`] directories below the prefixes.
    TooMany,
    /// Below /proc or /sys, which moat watch reads itself: an open of its
    /// own there would wait for its own answer.
    Own(String),
    /// An exact directory: its own opens would need a mark that the scan
    /// of a prefix above it would trip over (it opens directories).
    Dir(String),
}

impl std::fmt::Display for NoMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoMarks::Missing(p) => write!(f, "{p} does not exist"),
            NoMarks::TooMany => write!(f, "the prefixes hold more than {MAX_DIRS} directories"),
            NoMarks::Own(p) => write!(f, "{p} is below /proc or /sys, which moat reads"),
            NoMarks::Dir(p) => write!(f, "{p} is a directory named without a trailing /"),
        }
    }
}

pub struct OpenWatch {
    fd: OwnedFd,
    roots: Vec<PathBuf>,
    marked: HashSet<(u64, u64)>,
    /// The --cgroup filter, as /proc/PID/cgroup spells it (`/a/b`).
    cgroup: Option<String>,
    buf: Vec<u8>,
    last_scan: Instant,
    /// Directories beyond MAX_DIRS at the last scan (not watched).
    unmarked: usize,
    /// Watched opens the kernel reported / that passed the cgroup filter.
    pub seen: u64,
    pub matched: u64,
}

impl OpenWatch {
    /// Marks `files` (absolute; a trailing `/`: everything below), or says
    /// why marks cannot serve them.
    pub fn new(
        files: &[String],
        cgroup: Option<&Path>,
    ) -> Result<std::result::Result<Self, NoMarks>> {
        let mut roots = Vec::new();
        let mut exact = Vec::new();
        for f in files {
            if ["/proc", "/sys"].iter().any(|p| {
                f.strip_prefix(p)
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            }) {
                return Ok(Err(NoMarks::Own(f.clone())));
            }
            let Ok(md) = fs::metadata(f) else {
                return Ok(Err(NoMarks::Missing(f.clone())));
            };
            if f.ends_with('/') && md.is_dir() {
                roots.push(PathBuf::from(f));
            } else if md.is_dir() {
                return Ok(Err(NoMarks::Dir(f.clone())));
            } else {
                exact.push(f.clone());
            }
        }
        // Count first: nothing is marked for a list that cannot be served.
        if count_dirs(&roots, MAX_DIRS).is_none() {
            return Ok(Err(NoMarks::TooMany));
        }
        let cgroup = match cgroup {
            Some(p) => {
                let root = cgroup2_root()?;
                let rel = p.strip_prefix(&root).map_err(|_| {
                    anyhow::anyhow!("--cgroup {}: not below {}", p.display(), root.display())
                })?;
                Some(
                    format!("/{}", rel.display())
                        .trim_end_matches('/')
                        .to_string(),
                )
            }
            None => None,
        };
        let fd = perm_group(libc::FAN_UNLIMITED_QUEUE)?;
        for f in &exact {
            fan_mark(fd.as_raw_fd(), 0, libc::FAN_OPEN_PERM, f)
                .map_err(|e| anyhow::anyhow!("fanotify mark on {f}: {e}"))?;
        }
        let mut w = OpenWatch {
            fd,
            roots,
            marked: HashSet::new(),
            cgroup,
            buf: vec![0; 64 * 1024],
            last_scan: Instant::now(),
            unmarked: 0,
            seen: 0,
            matched: 0,
        };
        w.rescan()?;
        Ok(Ok(w))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Directories marked below the prefixes.
    pub fn marks(&self) -> usize {
        self.marked.len()
    }

    /// Marks directories that appeared below the prefixes since the last
    /// scan (each second: an open in a directory made since is not seen).
    pub fn rescan_due(&mut self) -> Result<()> {
        if self.last_scan.elapsed() >= Duration::from_secs(1) {
            self.last_scan = Instant::now();
            self.rescan()?;
        }
        Ok(())
    }

    fn rescan(&mut self) -> Result<()> {
        let left = mark_dirs(
            self.fd.as_raw_fd(),
            &self.roots,
            &mut self.marked,
            libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD,
            MAX_DIRS,
        )?;
        if left > self.unmarked {
            // Never silent: these directories' opens are not seen.
            eprintln!(
                "moat: {left} new directories below the watched prefixes are not watched (more than {MAX_DIRS} in all)"
            );
        }
        self.unmarked = left;
        Ok(())
    }

    /// Answers every pending open (always allowed) and appends an event for
    /// each one that passes the cgroup filter; `proc_of` gives the kernel
    /// table's entry of a process.
    pub fn drain(
        &mut self,
        proc_of: &dyn Fn(u32) -> Option<abi::SecProc>,
        out: &mut Vec<abi::SecEvent>,
    ) {
        let fd = self.fd.as_raw_fd();
        let mut buf = std::mem::take(&mut self.buf);
        answer_all(fd, &mut buf, &mut |m, efd| {
            if let Some(e) = self.event(m, efd, proc_of) {
                out.push(e);
            }
            false // watching never denies
        });
        self.buf = buf;
    }

    /// The event of one held open (None: filtered out by --cgroup).
    fn event(
        &mut self,
        m: &libc::fanotify_event_metadata,
        efd: &OwnedFd,
        proc_of: &dyn Fn(u32) -> Option<abi::SecProc>,
    ) -> Option<abi::SecEvent> {
        self.seen += 1;
        let tid = m.pid as u32;
        let tgid = tgid_of(tid);
        if let Some(want) = &self.cgroup {
            let cg = cgroup_of(tid)?;
            if !(cg == *want || cg.starts_with(&format!("{want}/")) || want.is_empty()) {
                return None;
            }
        }
        self.matched += 1;
        let (read, write) = open_access(tgid, tid);
        let path = fs::read_link(format!("/proc/self/fd/{}", efd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut e = user_event(abi::EV_OPEN, tgid, tid, proc_of(tgid).as_ref());
        super::fill(&mut e.args, &path);
        e.args_len = path.len().min(abi::ARGS_MAX - 1) as u32;
        // The access as open(2) flags (what the kernel side reports).
        e.arg0 = match (read, write) {
            (true, true) => libc::O_RDWR as u64,
            (false, true) => libc::O_WRONLY as u64,
            _ => libc::O_RDONLY as u64,
        };
        Some(e)
    }
}

/// Directories below `roots` (each counted once), None past `max`.
fn count_dirs(roots: &[PathBuf], max: usize) -> Option<usize> {
    let mut n = 0;
    walk_dirs(roots, |_, _| {
        n += 1;
        Ok(n <= max)
    })
    .ok()?;
    (n <= max).then_some(n)
}
