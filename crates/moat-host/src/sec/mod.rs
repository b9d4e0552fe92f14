//! Runtime security, host side: [`Watcher`] loads bpf/sec/sec.bpf.c, sets
//! its filters, attaches the three tp_btf programs (exec, fork, exit), seeds
//! the kernel's process table with what /proc shows (so processes that
//! started before moat have their real parents) and reads the events. The
//! programs' links belong to the Watcher: dropping it (or the process
//! dying) detaches everything; nothing is pinned.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

mod fan;
pub mod guard;
pub mod opens;
use aya::{
    Btf, Ebpf,
    maps::{Array, CgroupArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use moat_abi::sec as abi;
use moat_core::sec::{Lineage, Node, Xid, parse_stat};

use crate::loader::{self, Loaded, LogOpts};

#[derive(Clone, Debug, Default)]
pub struct WatchOpts {
    pub exec: bool,
    pub exit: bool,
    /// Only these binaries (as exec'd: the path given to execve).
    pub binaries: Vec<PathBuf>,
    /// Only processes in this cgroup v2 directory or below it.
    pub cgroup: Option<PathBuf>,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: Option<u32>,
    /// Open events for these absolute paths (a trailing `/`: everything below).
    pub files: Vec<String>,
    /// Connect events (every connect(2) to an IPv4 or IPv6 address).
    pub connect: bool,
}

/// The LPM key of a watched path: a prefix without its NUL, an exact path
/// with it (so `/etc/shadow` does not cover `/etc/shadow-`).
pub fn path_key(p: &str) -> abi::SecPathKey {
    let mut k = abi::SecPathKey {
        prefixlen: 0,
        path: [0; abi::PATH_MAX],
    };
    fill(&mut k.path, p);
    let n = p.len().min(abi::PATH_MAX - 1);
    k.prefixlen = if p.ends_with('/') { n * 8 } else { (n + 1) * 8 } as u32;
    k
}

/// One process as /proc shows it.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub xid: Xid,
    pub parent: Xid,
    pub comm: String,
    pub binary: String,
    pub uid: u32,
    pub gid: u32,
    pub args: Vec<String>,
    /// cgroup v2 id (0: unknown).
    pub cgroup: u64,
    /// It has a controlling terminal.
    pub tty: bool,
}

/// Every process /proc lists now (kernel threads included), with exec ids
/// derived the way the kernel side derives them for processes it did not
/// see start.
pub fn proc_snapshot() -> Vec<ProcInfo> {
    let mut raw = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return vec![];
    };
    let mut starts = std::collections::HashMap::new();
    let cg_root = guard::cgroup2_root().ok();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Some(st) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue; // gone meanwhile
        };
        starts.insert(pid, st.start_ticks);
        let (mut uid, mut gid) = (0, 0);
        if let Ok(s) = fs::read_to_string(dir.join("status")) {
            for l in s.lines() {
                let first = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse().ok());
                if l.starts_with("Uid:") {
                    uid = first(l).unwrap_or(0);
                } else if l.starts_with("Gid:") {
                    gid = first(l).unwrap_or(0);
                }
            }
        }
        let binary = fs::read_link(dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args = fs::read(dir.join("cmdline"))
            .map(|b| moat_core::sec::split_args(&b))
            .unwrap_or_default();
        let cgroup = cg_root
            .as_ref()
            .and_then(|r| cgroup_id_of(r, pid))
            .unwrap_or(0);
        raw.push((st, uid, gid, binary, args, cgroup));
    }
    raw.into_iter()
        .map(|(st, uid, gid, binary, args, cgroup)| ProcInfo {
            cgroup,
            tty: st.tty,
            pid: st.pid,
            ppid: st.ppid,
            xid: Xid::from_start_ticks(st.pid, st.start_ticks),
            parent: starts
                .get(&st.ppid)
                .map(|t| Xid::from_start_ticks(st.ppid, *t))
                .unwrap_or_default(),
            binary: if binary.is_empty() {
                format!("[{}]", st.comm)
            } else {
                binary
            },
            comm: st.comm,
            uid,
            gid,
            args,
        })
        .collect()
}

/// The cgroup v2 id of `pid` (the inode of its cgroup directory).
pub fn cgroup_id_of(cg_root: &Path, pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rel = guard::cgroup_of(pid)?;
    fs::metadata(cg_root.join(rel.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

/// The kernel's process table pinned at `pin` (a guard's), as ProcInfo
/// (arguments from /proc, which the table does not keep).
pub fn pinned_table(pin: &Path) -> Option<Vec<ProcInfo>> {
    table_procs(aya::maps::MapData::from_pin(pin).ok()?)
}

/// The process table of a running `moat watch` (or of any moat that keeps
/// one, nothing pinned): the largest map named sec_procs of the table's
/// shape, found by id; with that map id.
pub fn live_table() -> Option<(u32, Vec<ProcInfo>)> {
    let want = (4, std::mem::size_of::<abi::SecProc>() as u32);
    let mut best: Option<(u32, u32)> = None; // (id, entries)
    for info in aya::maps::loaded_maps().filter_map(Result::ok) {
        if info.name_as_str() != Some(abi::MAP_PROCS)
            || (info.key_size(), info.value_size()) != want
        {
            continue;
        }
        let Ok(m) = aya::maps::MapData::from_id(info.id()) else {
            continue;
        };
        let Ok(t) = BpfHashMap::<_, u32, abi::SecProc>::try_from(aya::maps::Map::HashMap(m)) else {
            continue;
        };
        let n = t.keys().count() as u32;
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((info.id(), n));
        }
    }
    let (id, _) = best?;
    Some((id, table_procs(aya::maps::MapData::from_id(id).ok()?)?))
}

fn table_procs(m: aya::maps::MapData) -> Option<Vec<ProcInfo>> {
    let t: BpfHashMap<_, u32, abi::SecProc> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(m)).ok()?;
    let mut out = Vec::new();
    for (pid, e) in t.iter().filter_map(Result::ok) {
        let args = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| moat_core::sec::split_args(&b))
            .unwrap_or_default();
        out.push(ProcInfo {
            pid,
            ppid: e.ppid,
            xid: Xid::of(&e.xid),
            parent: Xid::of(&e.parent),
            comm: moat_core::sec::cstr(&e.comm),
            binary: moat_core::sec::cstr(&e.binary),
            uid: e.uid,
            gid: e.gid,
            args,
            cgroup: e.cgroup,
            tty: e.flags & abi::EF_TTY != 0,
        });
    }
    out.sort_by_key(|p| p.pid);
    Some(out)
}

/// The lineage of what runs now.
pub fn lineage_of(procs: &[ProcInfo]) -> Lineage {
    let mut l = Lineage::new(200_000);
    for p in procs {
        l.insert(
            p.xid,
            Node {
                pid: p.pid,
                binary: p.binary.clone(),
                parent: p.parent,
                exited: false,
                cgroup: p.cgroup,
            },
        );
    }
    l
}

pub struct Watcher {
    bpf: Ebpf,
    ring: RingBuf<MapData>,
    /// `--file` served by fanotify marks (None: by the tracepoint, or no
    /// `--file`).
    opens: Option<opens::OpenWatch>,
    /// How `--file` opens are seen, for the "attached" line.
    pub open_via: Option<String>,
    pub programs: Vec<Loaded>,
    /// Processes written into the kernel's table at start.
    pub seeded: usize,
    pub lineage: Lineage,
}

pub(crate) fn fill(dst: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&b[..n]);
}

/// Loads the tp_btf program `name` for tracepoint `tp` and attaches it.
pub(crate) fn load_tp(
    bpf: &mut Ebpf,
    name: &str,
    tp: &str,
    btf: &Btf,
    log: &LogOpts,
) -> Result<Loaded> {
    let loaded = loader::load_with(bpf, name, log, |p| {
        let p: &mut BtfTracePoint = p.try_into().map_err(|e| anyhow!("{name}: {e}"))?;
        Ok(p.load(tp, btf))
    })?;
    let prog: &mut BtfTracePoint = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is not in the object"))?
        .try_into()
        .map_err(|e| anyhow!("{name}: {e}"))?;
    prog.attach()
        .map_err(|e| anyhow!("attaching {name} to tp_btf/{tp}: {e}"))?;
    Ok(loaded)
}

impl Watcher {
    pub fn start(o: &WatchOpts, log: &LogOpts) -> Result<Watcher> {
        crate::sys::require_privileges("moat watch")?;
        let ring = o.ring_bytes.unwrap_or(1 << 22);
        if !ring.is_power_of_two() || ring < 4096 {
            bail!("ring buffer size {ring}: a power of two of at least 4096 bytes");
        }
        for b in &o.binaries {
            if !b.is_absolute() {
                bail!("--binary {}: give an absolute path", b.display());
            }
            if b.as_os_str().len() >= abi::PATH_MAX {
                bail!(
                    "--binary {}: longer than {} bytes",
                    b.display(),
                    abi::PATH_MAX - 1
                );
            }
        }
        let cg =
            match &o.cgroup {
                Some(p) => Some(fs::File::open(p).with_context(|| {
                    format!("--cgroup {}: not a cgroup v2 directory", p.display())
                })?),
                None => None,
            };
        for f in &o.files {
            if !f.starts_with('/') || f.len() >= abi::PATH_MAX || f.contains("/../") {
                bail!(
                    "--file {f}: give an absolute path (shorter than {} bytes; a trailing / for a prefix)",
                    abi::PATH_MAX
                );
            }
        }
        if o.files.len() > abi::PATHS_MAX as usize {
            bail!("--file: at most {} paths", abi::PATHS_MAX);
        }
        let mut bpf = loader::open_with(moat_ebpf::SEC, log, |l| {
            l.map_max_entries(abi::MAP_EVENTS, ring);
        })?;
        let mut flags = 0;
        // Marks when they can serve every path (then an open elsewhere
        // costs nothing); the tracepoint otherwise.
        let (mut open_watch, mut open_via) = (None, None);
        if !o.files.is_empty() {
            match opens::OpenWatch::new(&o.files, o.cgroup.as_deref())? {
                Ok(w) => {
                    open_via = Some(format!(
                        "fanotify marks ({} files and directories)",
                        w.marks() + o.files.iter().filter(|f| !f.ends_with('/')).count()
                    ));
                    open_watch = Some(w);
                }
                Err(why) => {
                    open_via = Some(format!("tp_btf/sys_enter ({why})"));
                }
            }
        }
        if open_watch.is_none() && !o.files.is_empty() {
            flags |= abi::CF_OPEN;
            let mut m: aya::maps::LpmTrie<_, [u8; abi::PATH_MAX], u8> =
                aya::maps::LpmTrie::try_from(
                    bpf.map_mut(abi::MAP_PATHS)
                        .ok_or_else(|| anyhow!("no {}", abi::MAP_PATHS))?,
                )?;
            for f in &o.files {
                let k = path_key(f);
                m.insert(&aya::maps::lpm_trie::Key::new(k.prefixlen, k.path), 1, 0)?;
            }
        }
        if o.connect {
            flags |= abi::CF_CONNECT;
        }
        if o.exec {
            flags |= abi::CF_EXEC;
        }
        if o.exit {
            flags |= abi::CF_EXIT;
        }
        if !o.binaries.is_empty() {
            flags |= abi::CF_BINARY;
            let mut m: BpfHashMap<_, [u8; abi::PATH_MAX], u8> = BpfHashMap::try_from(
                bpf.map_mut(abi::MAP_BINS)
                    .ok_or_else(|| anyhow!("no {}", abi::MAP_BINS))?,
            )?;
            for b in &o.binaries {
                let mut k = [0u8; abi::PATH_MAX];
                fill(&mut k, &b.to_string_lossy());
                m.insert(k, 1, 0)?;
            }
        }
        if let Some(f) = &cg {
            flags |= abi::CF_CGROUP;
            let mut a = CgroupArray::try_from(
                bpf.map_mut(abi::MAP_CGROUPS)
                    .ok_or_else(|| anyhow!("no {}", abi::MAP_CGROUPS))?,
            )?;
            a.set(0, f.as_raw_fd(), 0).with_context(|| {
                format!(
                    "{}: not a cgroup v2 directory",
                    o.cgroup.as_ref().unwrap().display()
                )
            })?;
        }
        {
            let mut c: Array<_, abi::SecConfig> = Array::try_from(
                bpf.map_mut(abi::MAP_CONFIG)
                    .ok_or_else(|| anyhow!("no {}", abi::MAP_CONFIG))?,
            )?;
            c.set(0, abi::SecConfig { flags, pad: 0 }, 0)?;
        }
        let btf =
            Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
        let mut programs = attach_table(&mut bpf, &btf, log)?;
        let mut tps: Vec<(&str, &[&str])> = Vec::new();
        if open_watch.is_none() && !o.files.is_empty() {
            // tp_btf/sys_enter: the raw tracepoint, cheaper per call than
            // the syscalls/sys_enter_open* events (no perf record).
            programs.push(load_tp(&mut bpf, abi::PROG_OPEN, "sys_enter", &btf, log)?);
        }
        if o.connect {
            tps.push((abi::PROG_CONNECT_TP, &["sys_enter_connect"]));
        }
        for (name, points) in tps {
            programs.push(guard::load_syscall_tp(&mut bpf, name, points, log)?);
        }
        // Then what already runs.
        let procs = proc_snapshot();
        let seeded = seed_table(&mut bpf, &procs, &[])?;
        let ring = RingBuf::try_from(
            bpf.take_map(abi::MAP_EVENTS)
                .ok_or_else(|| anyhow!("no {}", abi::MAP_EVENTS))?,
        )?;
        Ok(Watcher {
            bpf,
            ring,
            opens: open_watch,
            open_via,
            programs,
            seeded,
            lineage: lineage_of(&procs),
        })
    }

    /// Waits up to `timeout` for events, then returns what is there.
    pub fn poll(&mut self, timeout: Duration) -> Vec<abi::SecEvent> {
        let mut out = Vec::new();
        if let Some(w) = &mut self.opens
            && let Err(e) = w.rescan_due()
        {
            eprintln!("moat: watching new directories: {e:#}");
        }
        self.drain(&mut out);
        if out.is_empty() {
            let mut pfd = [
                self.ring.as_raw_fd(),
                self.opens.as_ref().map_or(-1, |w| w.raw_fd()),
            ]
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds (a negative fd is ignored).
            unsafe {
                libc::poll(
                    pfd.as_mut_ptr(),
                    2,
                    timeout.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            self.drain(&mut out);
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<abi::SecEvent>) {
        if let Some(w) = &mut self.opens {
            let bpf = &self.bpf;
            let table = bpf
                .map(abi::MAP_PROCS)
                .and_then(|m| BpfHashMap::<_, u32, abi::SecProc>::try_from(m).ok());
            w.drain(
                &|tgid| table.as_ref().and_then(|t| t.get(&tgid, 0).ok()),
                out,
            );
        }
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<abi::SecEvent>() {
                // SAFETY: the record is a struct sec_event written by the
                // kernel side (size checked); read unaligned into a copy.
                let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const abi::SecEvent) };
                out.push(e);
            }
        }
    }

    /// Per hook (`abi::HOOK_*`), summed over CPUs.
    pub fn stats(&self) -> Result<Vec<abi::SecStat>> {
        let mut st = sum_stats(&self.bpf)?;
        if let Some(w) = &self.opens {
            // Marks: the kernel reports watched opens only ("seen"), all of
            // them (an unlimited queue: none lost); "matched" passed --cgroup.
            st[abi::HOOK_OPEN as usize] = abi::SecStat {
                seen: w.seen,
                matched: w.matched,
                lost: 0,
                pad: 0,
            };
        }
        Ok(st)
    }

    /// The image `xid` as the kernel knows it (running, or recently ended).
    pub fn kernel_node(&self, xid: Xid) -> Option<Node> {
        table_node(&self.bpf, xid)
    }

    /// The kernel's process table now.
    pub fn procs(&self) -> Result<Vec<(u32, abi::SecProc)>> {
        let m = self
            .bpf
            .map(abi::MAP_PROCS)
            .ok_or_else(|| anyhow!("no {}", abi::MAP_PROCS))?;
        let t: BpfHashMap<_, u32, abi::SecProc> = BpfHashMap::try_from(m)?;
        Ok(t.iter().filter_map(Result::ok).collect())
    }
}

/// The image `xid` from the kernel's tables: sec_procs while that pid runs
/// it, else sec_exited (images that ended or were replaced, newest kept).
pub(crate) fn table_node(bpf: &Ebpf, xid: Xid) -> Option<Node> {
    let node = |e: abi::SecProc, exited: bool| Node {
        pid: xid.pid,
        binary: moat_core::sec::cstr(&e.binary),
        parent: Xid::of(&e.parent),
        exited,
        cgroup: e.cgroup,
    };
    let t: BpfHashMap<_, u32, abi::SecProc> =
        BpfHashMap::try_from(bpf.map(abi::MAP_PROCS)?).ok()?;
    if let Ok(e) = t.get(&xid.pid, 0)
        && Xid::of(&e.xid) == xid
    {
        return Some(node(e, false));
    }
    let x: BpfHashMap<_, abi::SecXid, abi::SecProc> =
        BpfHashMap::try_from(bpf.map(abi::MAP_EXITED)?).ok()?;
    x.get(&xid.abi(), 0).ok().map(|e| node(e, true))
}

/// Loads and attaches the process table's programs, fork first: from then
/// on the table follows every new process.
pub(crate) fn attach_table(bpf: &mut Ebpf, btf: &Btf, log: &LogOpts) -> Result<Vec<Loaded>> {
    [
        (abi::PROG_FORK, "sched_process_fork"),
        (abi::PROG_EXEC, "sched_process_exec"),
        (abi::PROG_EXIT, "sched_process_exit"),
    ]
    .into_iter()
    .map(|(name, tp)| load_tp(bpf, name, tp, btf, log))
    .collect()
}

/// Writes `procs` (what /proc shows) into the kernel's table, never over an
/// entry the programs wrote meanwhile (BPF_NOEXIST). `masks[i]` are the
/// guard masks of `procs[i]`'s binary (empty: none); a process's ancestor
/// mask is its ancestors' (a bounded walk up the ppids). Returns how many
/// were written.
pub(crate) fn seed_table(
    bpf: &mut Ebpf,
    procs: &[ProcInfo],
    masks: &[abi::SecMasks],
) -> Result<usize> {
    let none = abi::SecMasks::default();
    let mask = |i: usize| masks.get(i).unwrap_or(&none);
    let by_pid: std::collections::HashMap<u32, usize> =
        procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let mut t: BpfHashMap<_, u32, abi::SecProc> = BpfHashMap::try_from(
        bpf.map_mut(abi::MAP_PROCS)
            .ok_or_else(|| anyhow!("no {}", abi::MAP_PROCS))?,
    )?;
    let mut n = 0;
    for (i, p) in procs.iter().enumerate() {
        let mut anc = 0;
        let mut at = p.ppid;
        for _ in 0..64 {
            let Some(&j) = by_pid.get(&at) else { break };
            anc |= mask(j).anc;
            if at <= 1 {
                break;
            }
            at = procs[j].ppid;
        }
        let mut e = abi::SecProc {
            xid: p.xid.abi(),
            parent: p.parent.abi(),
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            cgroup: p.cgroup,
            bin: mask(i).bin,
            notbin: mask(i).notbin,
            anc,
            selfanc: mask(i).anc,
            flags: if p.tty { abi::EF_TTY } else { 0 },
            ..Default::default()
        };
        fill(&mut e.comm, &p.comm);
        fill(&mut e.binary, &p.binary);
        if t.insert(p.pid, e, 1 /* BPF_NOEXIST */).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// sec_stats per hook (`abi::HOOK_*`), summed over CPUs.
pub(crate) fn sum_stats(bpf: &Ebpf) -> Result<Vec<abi::SecStat>> {
    let m = bpf
        .map(abi::MAP_STATS)
        .ok_or_else(|| anyhow!("no {}", abi::MAP_STATS))?;
    let a: PerCpuArray<_, abi::SecStat> = PerCpuArray::try_from(m)?;
    let mut out = Vec::new();
    for i in 0..abi::HOOK_MAX {
        let v = a.get(&i, 0)?;
        out.push(v.iter().fold(abi::SecStat::default(), |s, c| abi::SecStat {
            seen: s.seen + c.seen,
            matched: s.matched + c.matched,
            lost: s.lost + c.lost,
            pad: 0,
        }));
    }
    Ok(out)
}

/// The current working directory of `pid`, if it still runs.
pub fn cwd_of(pid: u32) -> Option<String> {
    fs::read_link(Path::new("/proc").join(pid.to_string()).join("cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
