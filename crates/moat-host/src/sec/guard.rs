//! `moat guard`, host side: [`Guard`] loads bpf/sec/sec.bpf.c as a guard
//! instance (the process table with the policy's masks, the exec, connect,
//! setid and ptrace rules in the kernel), answers fanotify permission
//! events for the rules the kernel cannot decide here (opens, exec deny),
//! and reports every rule's events. Everything belongs to the Guard: when
//! the process holding it ends, every program, link and mark goes with it
//! (fail-open: run it under systemd or `moat daemon`, which restart it).
//! Per-rule counts are pinned at `PIN_ROOT/guard/<pid>/counts` so `moat
//! guard status` reads them from the kernel.

use std::{
    collections::HashSet,
    fs,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, Program, TracePoint},
};
use moat_abi::sec as abi;
use moat_core::sec::{
    Event, Lineage, Xid, cstr,
    guard::{self as g, Action, Compiled, GuardPolicy, Mechanism, Resolve},
};

use crate::{
    loader::{self, Loaded, LogOpts},
    sec::{
        attach_table,
        fan::{answer_all, fan_mark, mark_dirs, perm_group},
        proc_snapshot, seed_table,
    },
    sys,
};

/// The kernel's dev_t of a stat'ed file.
pub fn kdev(st_dev: u64) -> u32 {
    let (ma, mi) = (libc::major(st_dev), libc::minor(st_dev));
    (ma << 20) | mi
}

pub fn inode_of(md: &fs::Metadata) -> abi::SecInode {
    abi::SecInode {
        ino: md.ino(),
        dev: kdev(md.dev()),
        pad: 0,
    }
}

/// The inodes the kernel looks up for a file at `path` (resolved): the
/// file, then its directories up to the top of its filesystem.
pub fn inode_chain(path: &Path, md: &fs::Metadata) -> Vec<abi::SecInode> {
    let mut out = vec![inode_of(md)];
    let mut p = path.parent();
    while let Some(d) = p {
        if out.len() >= abi::DIR_DEPTH as usize {
            break;
        }
        let Ok(m) = fs::metadata(d) else { break };
        if m.dev() != md.dev() {
            break;
        }
        out.push(inode_of(&m));
        p = d.parent();
    }
    out
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup or, hybrid, /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for l in mi.lines() {
        let Some((a, b)) = l.split_once(" - ") else {
            continue;
        };
        if b.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = a.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp));
        }
    }
    bail!("cgroup v2 is not mounted (needed for cgroup rules and connect hooks)")
}

/// The cgroup v2 path of a process below the root (`/web/x`), from /proc.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.to_string())
}

pub struct HostResolve {
    pub cg_root: PathBuf,
}

impl Resolve for HostResolve {
    fn inode(&self, path: &str) -> Option<abi::SecInode> {
        fs::metadata(path).ok().map(|m| inode_of(&m))
    }
    fn cgroup(&self, dir: &Path) -> Result<(u64, u32), String> {
        let rel = dir
            .strip_prefix(&self.cg_root)
            .map_err(|_| format!("not below the cgroup v2 mount {}", self.cg_root.display()))?;
        let md = fs::metadata(dir).map_err(|e| format!("{e}"))?;
        if !md.is_dir() {
            return Err("not a directory".into());
        }
        Ok((md.ino(), rel.components().count() as u32))
    }
}

#[derive(Clone, Debug, Default)]
pub struct GuardOpts {
    /// Every action becomes log (moat guard test).
    pub log_only: bool,
    /// Restrict every rule to this cgroup v2 directory (moat guard test).
    pub scope: Option<PathBuf>,
    pub ring_bytes: Option<u32>,
    /// Directories the enforcer itself writes (its state): open rules must
    /// not cover them, or it would wait on its own permission events.
    pub protected: Vec<PathBuf>,
}

/// One event of a rule.
#[derive(Clone, Debug)]
pub struct GuardEvent {
    pub event: Event,
    pub rule: String,
    /// What the rule's action is (`log_only` may have made it log).
    pub rule_action: Action,
    /// What was done.
    pub action: Action,
    /// open, exec deny: the file; open: the access.
    pub path: Option<String>,
    pub access: Option<&'static str>,
    pub ancestors: Vec<moat_core::sec::Ancestor>,
}

struct Fan {
    fd: OwnedFd,
    exec_rules: Vec<usize>,
    open_rules: Vec<usize>,
    open_dirs: Vec<String>,
    /// Directories marked for prefixes (recursively, rescanned).
    marked: HashSet<(u64, u64)>,
}

pub struct Guard {
    bpf: Ebpf,
    ring: RingBuf<MapData>,
    pub policy: GuardPolicy,
    pub compiled: Compiled,
    pub log_only: bool,
    fan: Option<Fan>,
    cg_rel: Vec<Option<String>>,
    pub programs: Vec<Loaded>,
    pub seeded: usize,
    pub pin_dir: Option<PathBuf>,
    user_counts: Vec<abi::SecRuleStat>,
    /// fanotify's read buffer, kept between rounds.
    fan_buf: Vec<u8>,
}

/// Mounts tracefs on /sys/kernel/tracing when its events are not there.
pub fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let t = c"/sys/kernel/tracing";
    let src = c"tracefs";
    // SAFETY: valid NUL-terminated strings; data is null.
    let rc = unsafe { libc::mount(src.as_ptr(), t.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "mounting tracefs on /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Loads tracepoint program `name` and attaches it to each of the
/// syscalls/`points` (mounting tracefs first when needed).
pub fn load_syscall_tp(
    bpf: &mut Ebpf,
    name: &str,
    points: &[&str],
    log: &LogOpts,
) -> Result<Loaded> {
    ensure_tracefs()?;
    let loaded = loader::load_with(bpf, name, log, |p| {
        let p: &mut TracePoint = p.try_into().map_err(|e| anyhow!("{name}: {e}"))?;
        Ok(p.load())
    })?;
    let p: &mut TracePoint = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no {name}"))?
        .try_into()
        .map_err(|e| anyhow!("{name}: {e}"))?;
    for tp in points {
        p.attach("syscalls", tp)
            .map_err(|e| anyhow!("attaching {name} to syscalls/{tp}: {e}"))?;
    }
    Ok(loaded)
}

const MAX_DIR_MARKS: usize = 20_000;

impl Fan {
    fn new(p: &GuardPolicy, c: &Compiled) -> Result<Fan> {
        let fd = perm_group(0)?;
        let mut f = Fan {
            fd,
            exec_rules: vec![],
            open_rules: vec![],
            open_dirs: vec![],
            marked: HashSet::new(),
        };
        for (i, m) in c.mechanisms.iter().enumerate() {
            match m {
                Mechanism::FanotifyExec => f.exec_rules.push(i),
                Mechanism::FanotifyOpen => f.open_rules.push(i),
                _ => {}
            }
        }
        let (exec, open) = g::fanotify_paths(p);
        let raw = f.fd.as_raw_fd();
        for pat in &exec {
            if fs::metadata(pat.stat_path()).is_err() {
                continue; // missing: matches nothing (reported by status)
            }
            // A prefix: the directory's whole filesystem (execs only, so
            // the cost is per exec); the path check is done here.
            let flags = if pat.prefix {
                libc::FAN_MARK_FILESYSTEM
            } else {
                0
            };
            fan_mark(raw, flags, libc::FAN_OPEN_EXEC_PERM, pat.stat_path())
                .with_context(|| format!("fanotify mark (exec) on {}", pat.path))?;
        }
        for pat in &open {
            let Ok(md) = fs::metadata(pat.stat_path()) else {
                continue;
            };
            if pat.prefix {
                f.open_dirs.push(pat.stat_path().to_string());
            } else if !md.is_dir() {
                fan_mark(raw, 0, libc::FAN_OPEN_PERM, &pat.path)
                    .with_context(|| format!("fanotify mark (open) on {}", pat.path))?;
            }
        }
        f.rescan()?;
        Ok(f)
    }

    /// Marks every directory below the open prefixes (new ones appear
    /// between scans: the scan runs every second).
    fn rescan(&mut self) -> Result<()> {
        let roots: Vec<PathBuf> = self.open_dirs.iter().map(PathBuf::from).collect();
        let left = mark_dirs(
            self.fd.as_raw_fd(),
            &roots,
            &mut self.marked,
            libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD,
            MAX_DIR_MARKS,
        )?;
        if left > 0 {
            bail!("more than {MAX_DIR_MARKS} directories below the open prefixes");
        }
        Ok(())
    }
}

/// The open flags of the open(2)-family call thread `tid` is blocked in,
/// as (read, write); both true when it cannot be told (io_uring, gone).
pub(crate) fn open_access(tgid: u32, tid: u32) -> (bool, bool) {
    // The opener queues the event, then goes to sleep waiting for the
    // answer: read early, /proc says "running"; look again until it sleeps.
    let path = format!("/proc/{tgid}/task/{tid}/syscall");
    let mut s = String::new();
    for i in 0..200 {
        s = fs::read_to_string(&path).unwrap_or_default();
        if !s.starts_with("running") {
            break;
        }
        if i < 20 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let f: Vec<u64> = s
        .split_whitespace()
        .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap_or(0))
        .collect();
    let nr = s
        .split_whitespace()
        .next()
        .and_then(|x| x.parse::<i64>().ok())
        .unwrap_or(-1);
    let flags = match nr {
        libc::SYS_open => f.get(2).copied(),
        libc::SYS_openat => f.get(3).copied(),
        libc::SYS_creat => Some(libc::O_WRONLY as u64),
        libc::SYS_openat2 => {
            // struct open_how's first field: the flags.
            let mut b = [0u8; 8];
            let ok = f.get(3).is_some_and(|&ptr| {
                let local = libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: ptr as *mut libc::c_void,
                    iov_len: 8,
                };
                // SAFETY: reads 8 bytes of another process into b.
                unsafe { libc::process_vm_readv(tid as i32, &local, 1, &remote, 1, 0) == 8 }
            });
            ok.then(|| u64::from_ne_bytes(b))
        }
        _ => None,
    };
    match flags {
        Some(fl) => {
            let acc = fl & libc::O_ACCMODE as u64;
            let write = acc != libc::O_RDONLY as u64 || fl & libc::O_TRUNC as u64 != 0;
            (acc != libc::O_WRONLY as u64, write)
        }
        None => (true, true),
    }
}

pub(crate) fn tgid_of(tid: u32) -> u32 {
    fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

impl Guard {
    pub fn start(policy: GuardPolicy, o: &GuardOpts, log: &LogOpts) -> Result<Guard> {
        sys::require_privileges("moat guard")?;
        let cg_root = cgroup2_root()?;
        let res = HostResolve {
            cg_root: cg_root.clone(),
        };
        for d in &o.protected {
            let dir = format!("{}/", d.display().to_string().trim_end_matches('/'));
            for r in policy.rules.iter().filter(|r| r.on == g::On::Open) {
                if let Some(p) = r.path.iter().find(|p| g::covers_any(p, &[dir.as_str()])) {
                    bail!(
                        "{}:{}:{}: rule {:?}: {} covers {dir}, where the enforcer keeps its state (it would wait on itself)",
                        policy.source.display(),
                        r.at.0,
                        r.at.1,
                        r.name,
                        p.path
                    );
                }
            }
        }
        let compiled = g::compile(&policy, &res, o.log_only, o.scope.as_deref())
            .map_err(|e| anyhow!("{}: {e}", policy.source.display()))?;
        let cg_rel: Vec<Option<String>> = policy
            .rules
            .iter()
            .map(|r| {
                o.scope.as_deref().or(r.cgroup.as_deref()).map(|d| {
                    let rel = d.strip_prefix(&cg_root).unwrap_or(d);
                    format!("/{}", rel.display())
                        .trim_end_matches('/')
                        .to_string()
                        .replace("//", "/")
                })
            })
            .map(|o| o.map(|s| if s.is_empty() { "/".into() } else { s }))
            .collect();
        let ring = o.ring_bytes.unwrap_or(1 << 22);
        if !ring.is_power_of_two() || ring < 4096 {
            bail!("ring buffer size {ring}: a power of two of at least 4096 bytes");
        }
        let mut bpf = loader::open_with(moat_ebpf::SEC, log, |l| {
            l.map_max_entries(abi::MAP_EVENTS, ring);
        })?;
        let map = |bpf: &mut Ebpf, n: &str| -> Result<aya::maps::Map> {
            bpf.take_map(n)
                .ok_or_else(|| anyhow!("no map {n} in the sec object"))
        };
        {
            let mut c: Array<_, abi::SecConfig> = Array::try_from(
                bpf.map_mut(abi::MAP_CONFIG)
                    .ok_or_else(|| anyhow!("no config"))?,
            )?;
            c.set(
                0,
                abi::SecConfig {
                    flags: abi::CF_GUARD,
                    pad: 0,
                },
                0,
            )?;
            let mut gc: Array<_, abi::SecGuard> = Array::try_from(
                bpf.map_mut(abi::MAP_GUARD)
                    .ok_or_else(|| anyhow!("no sec_gconf"))?,
            )?;
            gc.set(0, compiled.guard, 0)?;
            let mut f: BpfHashMap<_, abi::SecInode, abi::SecMasks> = BpfHashMap::try_from(
                bpf.map_mut(abi::MAP_FILES)
                    .ok_or_else(|| anyhow!("no sec_gfiles"))?,
            )?;
            for (k, v) in &compiled.files {
                f.insert(*k, *v, 0)?;
            }
            let mut n4: LpmTrie<_, [u8; 4], abi::SecNet> = LpmTrie::try_from(
                bpf.map_mut(abi::MAP_NET4)
                    .ok_or_else(|| anyhow!("no sec_gnet4"))?,
            )?;
            for (k, v) in &compiled.net4 {
                n4.insert(&Key::new(k.prefixlen, k.addr), *v, 0)?;
            }
            let mut pm: BpfHashMap<_, u32, u64> = BpfHashMap::try_from(
                bpf.map_mut(abi::MAP_PORTS)
                    .ok_or_else(|| anyhow!("no sec_gports"))?,
            )?;
            for (p, m) in &compiled.ports {
                pm.insert(*p as u32, *m, 0)?;
            }
            let mut n6: LpmTrie<_, [u8; 16], abi::SecNet> = LpmTrie::try_from(
                bpf.map_mut(abi::MAP_NET6)
                    .ok_or_else(|| anyhow!("no sec_gnet6"))?,
            )?;
            for (k, v) in &compiled.net6 {
                n6.insert(&Key::new(k.prefixlen, k.addr), *v, 0)?;
            }
        }
        let btf =
            Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
        // The process table first, then the rules.
        let mut programs = attach_table(&mut bpf, &btf, log)?;
        let seeded = seed(&mut bpf, &compiled)?;
        let mut tps: Vec<(&str, Vec<&str>)> = Vec::new();
        if compiled.connect_tp {
            tps.push((abi::PROG_CONNECT_TP, vec!["sys_enter_connect"]));
        }
        if compiled.setid {
            tps.push((
                abi::PROG_SETID,
                vec![
                    "sys_enter_setuid",
                    "sys_enter_setgid",
                    "sys_enter_setreuid",
                    "sys_enter_setregid",
                    "sys_enter_setresuid",
                    "sys_enter_setresgid",
                    "sys_enter_setfsuid",
                    "sys_enter_setfsgid",
                    "sys_enter_capset",
                ],
            ));
        }
        if compiled.ptrace {
            tps.push((abi::PROG_PTRACE, vec!["sys_enter_ptrace"]));
        }
        if compiled.bind_tp {
            tps.push((abi::PROG_BIND_TP, vec!["sys_enter_bind"]));
        }
        for (name, points) in tps {
            programs.push(load_syscall_tp(&mut bpf, name, &points, log)?);
        }
        let mut cg_progs = Vec::new();
        if compiled.connect {
            cg_progs.extend([abi::PROG_CONNECT4, abi::PROG_CONNECT6]);
        }
        if compiled.bind {
            cg_progs.extend([abi::PROG_BIND4, abi::PROG_BIND6]);
        }
        if !cg_progs.is_empty() {
            let root = fs::File::open(&cg_root)
                .with_context(|| format!("opening {}", cg_root.display()))?;
            for name in cg_progs {
                programs.push(loader::load_with(&mut bpf, name, log, |p| match p {
                    Program::CgroupSockAddr(p) => Ok(p.load()),
                    Program::CgroupSock(p) => Ok(p.load()),
                    _ => Err(anyhow!("{name}: not a cgroup socket program")),
                })?);
                // A bpf_link on a cgroup runs beside others (links are always
                // multi); link_create takes no attach flags.
                let r = match bpf.program_mut(name).ok_or_else(|| anyhow!("no {name}"))? {
                    Program::CgroupSockAddr(p) => {
                        p.attach(&root, CgroupAttachMode::Single).map(|_| ())
                    }
                    Program::CgroupSock(p) => p.attach(&root, CgroupAttachMode::Single).map(|_| ()),
                    _ => unreachable!("checked at load"),
                };
                r.map_err(|e| anyhow!("attaching {name} to {}: {e}", cg_root.display()))?;
            }
        }
        let fan = if compiled.fanotify {
            Some(Fan::new(&policy, &compiled)?)
        } else {
            None
        };
        let ring = RingBuf::try_from(map(&mut bpf, abi::MAP_EVENTS)?)?;
        let n = policy.rules.len();
        Ok(Guard {
            bpf,
            ring,
            policy,
            compiled,
            log_only: o.log_only,
            fan,
            cg_rel,
            programs,
            seeded,
            pin_dir: None,
            user_counts: vec![abi::SecRuleStat::default(); n],
            fan_buf: Vec::new(),
        })
    }

    /// Pins the per-rule counts (for moat guard status) and the process
    /// table (for moat ps) under `dir`.
    pub fn pin_counts(&mut self, dir: &Path) -> Result<()> {
        sys::ensure_bpffs()?;
        sys::private_dir(dir)?;
        // The process table too: moat ps prints it while a guard runs.
        for (map, name) in [(abi::MAP_COUNTS, "counts"), (abi::MAP_PROCS, "procs")] {
            let m = self.bpf.map_mut(map).ok_or_else(|| anyhow!("no {map}"))?;
            let p = dir.join(name);
            let _ = fs::remove_file(&p);
            m.pin(&p)
                .with_context(|| format!("pinning {}", p.display()))?;
        }
        self.pin_dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// Directories fanotify watches for prefixes.
    pub fn dir_marks(&self) -> usize {
        self.fan.as_ref().map_or(0, |f| f.marked.len())
    }

    /// Per rule, from the kernel (userspace-decided rules included).
    pub fn counts(&self) -> Result<Vec<abi::SecRuleStat>> {
        let a: Array<_, abi::SecRuleStat> = Array::try_from(
            self.bpf
                .map(abi::MAP_COUNTS)
                .ok_or_else(|| anyhow!("no {}", abi::MAP_COUNTS))?,
        )?;
        (0..self.policy.rules.len() as u32)
            .map(|i| Ok(a.get(&i, 0)?))
            .collect()
    }

    /// Per hook, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<abi::SecStat>> {
        crate::sec::sum_stats(&self.bpf)
    }

    fn proc_entry(&self, tgid: u32) -> Option<abi::SecProc> {
        let t: BpfHashMap<_, u32, abi::SecProc> =
            BpfHashMap::try_from(self.bpf.map(abi::MAP_PROCS)?).ok()?;
        t.get(&tgid, 0).ok()
    }

    fn ancestors(&self, parent: Xid, within: u64) -> Vec<moat_core::sec::Ancestor> {
        let empty = Lineage::new(1);
        empty.ancestors_with(parent, 32, within, |x| crate::sec::table_node(&self.bpf, x))
    }

    /// Serves until `stop`: answers fanotify, reads the ring buffer, calls
    /// `on_event` for every rule event, rescans prefixes every second.
    pub fn serve(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        until: Option<std::time::Instant>,
        on_event: &mut dyn FnMut(&GuardEvent),
    ) -> Result<()> {
        let mut last_scan = std::time::Instant::now();
        loop {
            let done = stop.load(std::sync::atomic::Ordering::Relaxed)
                || until.is_some_and(|t| std::time::Instant::now() >= t);
            let mut pfds = vec![libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(f) = &self.fan {
                pfds.push(libc::pollfd {
                    fd: f.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: valid pollfds.
            unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    if done { 0 } else { 100 },
                )
            };
            self.fanotify_round(on_event)?;
            let mut raws = Vec::new();
            while let Some(item) = self.ring.next() {
                if item.len() < std::mem::size_of::<abi::SecEvent>() {
                    continue;
                }
                // SAFETY: a struct sec_event written by the kernel side (size checked).
                raws.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr() as *const abi::SecEvent)
                });
            }
            for raw in raws {
                let ev = Event::decode(&raw);
                let Some(ri) = ev.rule_index.filter(|i| *i < self.policy.rules.len()) else {
                    continue;
                };
                let r = &self.policy.rules[ri];
                let ge = GuardEvent {
                    ancestors: self.ancestors(ev.parent_exec_id, ev.cgroup_id),
                    rule: r.name.clone(),
                    rule_action: r.action,
                    action: Action::of_abi(raw.action).unwrap_or(Action::Log),
                    path: None,
                    access: None,
                    event: ev,
                };
                on_event(&ge);
            }
            if done {
                return Ok(());
            }
            if last_scan.elapsed() >= Duration::from_secs(1) {
                last_scan = std::time::Instant::now();
                if let Some(f) = &mut self.fan {
                    f.rescan()?;
                }
            }
        }
    }

    fn fanotify_round(&mut self, on_event: &mut dyn FnMut(&GuardEvent)) -> Result<()> {
        let Some(fd) = self.fan.as_ref().map(|f| f.fd.as_raw_fd()) else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut self.fan_buf);
        buf.resize(64 * 1024, 0);
        let r = self.fanotify_read(fd, &mut buf, on_event);
        self.fan_buf = buf;
        r
    }

    fn fanotify_read(
        &mut self,
        fd: RawFd,
        buf: &mut [u8],
        on_event: &mut dyn FnMut(&GuardEvent),
    ) -> Result<()> {
        answer_all(fd, buf, &mut |m, efd| self.decide(m, efd, on_event));
        Ok(())
    }

    /// Whether to deny the operation fanotify holds (and what to report).
    fn decide(
        &mut self,
        m: &libc::fanotify_event_metadata,
        efd: &OwnedFd,
        on_event: &mut dyn FnMut(&GuardEvent),
    ) -> bool {
        let tid = m.pid as u32;
        let tgid = tgid_of(tid);
        let path = fs::read_link(format!("/proc/self/fd/{}", efd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entry = self.proc_entry(tgid);
        let exec = m.mask & libc::FAN_OPEN_EXEC_PERM != 0;
        let fan = self.fan.as_ref().expect("fanotify");
        let (which, bin, notbin, anc, read, write) = if exec {
            // The masks of the binary about to run; its ancestors are the
            // image running now and that one's.
            let md = fs::metadata(format!("/proc/self/fd/{}", efd.as_raw_fd()));
            let chain = md
                .as_ref()
                .map(|md| inode_chain(Path::new(&path), md))
                .unwrap_or_default();
            let mk = g::masks_of(&self.compiled, &chain);
            let anc = entry.map(|e| e.anc | e.selfanc).unwrap_or(0);
            (fan.exec_rules.clone(), mk.bin, mk.notbin, anc, true, false)
        } else {
            let (r, w) = open_access(tgid, tid);
            let (b, nb, a) = entry.map(|e| (e.bin, e.notbin, e.anc)).unwrap_or((0, 0, 0));
            (fan.open_rules.clone(), b, nb, a, r, w)
        };
        if which.is_empty() {
            return false;
        }
        let cgroup = cgroup_of(tid).unwrap_or_default();
        let op = g::Op {
            path: &path,
            read,
            write,
            bin,
            notbin,
            anc,
            cgroup: &cgroup,
            // (the exec'ing image's terminal: exec does not change it)
            tty: entry.is_some_and(|e| e.flags & abi::EF_TTY != 0),
        };
        let cg_rel = &self.cg_rel;
        let hit = g::user_match(&self.policy, &which, &op, &|i| cg_rel[i].clone());
        let Some((best, act)) = g::strongest(&self.policy, &hit, self.log_only) else {
            return false;
        };
        if act == Action::Kill {
            // SAFETY: plain syscall; the process dies as the open fails.
            unsafe { libc::kill(tgid as i32, libc::SIGKILL) };
        }
        for &i in &hit {
            let c = &mut self.user_counts[i];
            c.matched += 1;
            c.acted += 1;
            if i == best {
                c.events += 1;
            }
        }
        self.flush_counts(&hit);
        let r = &self.policy.rules[best];
        let mut raw = user_event(
            if exec { abi::EV_EXEC } else { abi::EV_OPEN },
            tgid,
            tid,
            entry.as_ref(),
        );
        raw.rule = best as u32 + 1;
        raw.action = act.abi();
        let mut ev = Event::decode(&raw);
        if exec {
            // The exec did not happen (deny) or is being checked: no args.
            ev.args = None;
        }
        let ancestors = entry
            .map(|e| {
                let mut a = vec![moat_core::sec::Ancestor {
                    pid: tgid,
                    binary: cstr(&e.binary),
                    exec_id: Xid::of(&e.xid),
                }];
                if !exec {
                    a.clear();
                    a.extend(self.ancestors(Xid::of(&e.parent), e.cgroup));
                } else {
                    a.extend(self.ancestors(Xid::of(&e.parent), e.cgroup));
                }
                a
            })
            .unwrap_or_default();
        on_event(&GuardEvent {
            event: ev,
            rule: r.name.clone(),
            rule_action: r.action,
            action: act,
            path: Some(path),
            access: (!exec).then_some(match (read, write) {
                (true, true) => "read_write",
                (false, true) => "write",
                _ => "read",
            }),
            ancestors,
        });
        act != Action::Log
    }

    fn flush_counts(&mut self, rules: &[usize]) {
        let Some(m) = self.bpf.map_mut(abi::MAP_COUNTS) else {
            return;
        };
        let Ok(mut a) = Array::<_, abi::SecRuleStat>::try_from(m) else {
            return;
        };
        for &i in rules {
            let _ = a.set(i as u32, self.user_counts[i], 0);
        }
    }
}

/// An event made in moat (from fanotify) about process `tgid` (thread
/// `tid`), named from its kernel table entry when it has one; now.
pub(crate) fn user_event(
    kind: u32,
    tgid: u32,
    tid: u32,
    entry: Option<&abi::SecProc>,
) -> abi::SecEvent {
    // SAFETY: SecEvent is plain old data; all zeroes is a valid value.
    let mut raw: abi::SecEvent = unsafe { std::mem::zeroed() };
    raw.kind = kind;
    raw.pid = tgid;
    raw.tid = tid;
    raw.ktime = crate::fw::observe::clock_ns(libc::CLOCK_BOOTTIME);
    if let Some(e) = entry {
        raw.ppid = e.ppid;
        raw.xid = e.xid;
        raw.parent = e.parent;
        raw.cgroup = e.cgroup;
        raw.uid = e.uid;
        raw.gid = e.gid;
        raw.flags = e.flags;
        raw.comm = e.comm;
        raw.binary = e.binary;
    }
    raw
}

/// Writes what /proc shows into the guard's process table, with the
/// policy's masks of each binary.
fn seed(bpf: &mut Ebpf, c: &Compiled) -> Result<usize> {
    let procs = proc_snapshot();
    let masks: Vec<abi::SecMasks> = procs
        .iter()
        .map(|p| {
            let exe = PathBuf::from(format!("/proc/{}/exe", p.pid));
            match fs::metadata(&exe) {
                Ok(md) if !p.binary.starts_with('[') => {
                    g::masks_of(c, &inode_chain(Path::new(&p.binary), &md))
                }
                _ => abi::SecMasks::default(),
            }
        })
        .collect();
    seed_table(bpf, &procs, &masks)
}
