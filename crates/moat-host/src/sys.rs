//! Host facts and setup the commands share: privileges, bpffs, JIT, network
//! namespaces. Everything here is checked once, up front, with plain words.

use std::{
    fs,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Where moat pins shared state.
pub const PIN_ROOT: &str = "/sys/fs/bpf/moat";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Fails with a plain message unless the process may load and attach BPF
/// programs (root, or CAP_BPF/CAP_SYS_ADMIN plus CAP_NET_ADMIN).
pub fn require_privileges(what: &str) -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if (has(CAP_BPF) || has(CAP_SYS_ADMIN)) && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    bail!(
        "{what} needs root (or the capabilities CAP_BPF and CAP_NET_ADMIN) to load eBPF programs; \
         run it as root or with sudo"
    )
}

/// Mounts bpffs on /sys/fs/bpf when it is not mounted there yet.
pub fn ensure_bpffs() -> Result<()> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        return Ok(());
    }
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mounting bpffs on /sys/fs/bpf failed: {e}");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Writes `bytes` to `dest` atomically (a temporary file beside it, mode
/// 0600, synced, renamed into place): a reader sees the old or the new
/// content, never a part; a failure (disk full) leaves the old one.
pub fn write_private_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!("{name}.{}.tmp", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.with_context(|| format!("writing {}", dest.display()))
}

/// Makes `dir` a directory only root controls, creating what is missing with
/// mode 0700, and refuses (naming the path, owner and mode) a path that
/// someone else could change: every component must be a real directory (no
/// symlink) owned by root, not writable by others unless sticky (like
/// /sys/fs/bpf and /tmp, where others cannot remove root's entries), and
/// `dir` itself must be closed to others (no group/other bits). A directory
/// an unprivileged user made in advance (in world-writable /sys/fs/bpf, say)
/// is refused, never adopted.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let mut cur = std::path::PathBuf::new();
    let comps: Vec<_> = abs.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        let md = match fs::symlink_metadata(&cur) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(0o700).create(&cur) {
                    Ok(()) => {}
                    // Someone made it between our look and our mkdir: judge theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating {}", cur.display()));
                    }
                }
                fs::symlink_metadata(&cur).with_context(|| format!("checking {}", cur.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", cur.display())),
        };
        let mode = md.mode() & 0o7777;
        let refuse = |why: &str| {
            anyhow::anyhow!(
                "refusing to use {}: {why} (owner uid {}, gid {}, mode {:04o}); moat keeps its state in directories only root controls. Remove it (after finding out who made it) and run the command again",
                cur.display(),
                md.uid(),
                md.gid(),
                mode
            )
        };
        if md.file_type().is_symlink() {
            return Err(refuse("it is a symbolic link"));
        }
        if !md.is_dir() {
            return Err(refuse("it is not a directory"));
        }
        if md.uid() != 0 {
            return Err(refuse("it is not owned by root"));
        }
        let sticky = mode & 0o1000 != 0;
        if !sticky && (mode & 0o002 != 0 || (mode & 0o020 != 0 && md.gid() != 0)) {
            return Err(refuse("others can write to it"));
        }
        if last && mode & 0o077 != 0 {
            return Err(refuse("it is open to group or others"));
        }
    }
    Ok(())
}

/// "on", "on (debug)" or "off" from /proc/sys/net/core/bpf_jit_enable.
pub fn jit_status() -> &'static str {
    match fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .map(|s| s.trim().to_string())
        .as_deref()
    {
        Ok("1") => "on",
        Ok("2") => "on (debug)",
        Ok("0") => "off (interpreter)",
        _ => "unknown",
    }
}

/// While alive, the current thread is inside network namespace `name`
/// (/run/netns/NAME); dropping it returns the thread to where it was.
/// Sockets and links created meanwhile stay in the namespace.
pub struct NetnsGuard {
    home: fs::File,
}

impl NetnsGuard {
    pub fn enter(name: &str) -> Result<NetnsGuard> {
        let home = fs::File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let path = if name.contains('/') {
            name.to_string()
        } else {
            format!("/run/netns/{name}")
        };
        let target = fs::File::open(&path)
            .with_context(|| format!("network namespace {name} not found ({path})"))?;
        // SAFETY: target is an open namespace fd; setns affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering network namespace {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(NetnsGuard { home })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: home is the namespace fd this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Runs `f` inside namespace `name` (or here if `None`).
pub fn in_netns<T>(name: Option<&str>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _guard = match name {
        Some(n) => Some(NetnsGuard::enter(n)?),
        None => None,
    };
    f()
}

/// A flag set by SIGINT/SIGTERM.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing signal handler")?;
    }
    Ok(flag)
}

/// Sleeps up to `d`, waking early when `stop` is set. Returns true if stopped.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    stop.load(Ordering::Relaxed)
}

/// Plain words for an errno; the number and the C library's text for one
/// without words of its own.
pub fn errno_words(errno: i32) -> std::borrow::Cow<'static, str> {
    let words = match errno {
        libc::EPERM => "EPERM: operation not permitted (needs root: CAP_BPF, CAP_NET_ADMIN)",
        libc::EACCES => "EACCES: the verifier found the program unsafe",
        libc::EINVAL => "EINVAL: the kernel refused the program or an argument as invalid",
        libc::E2BIG => "E2BIG: the program is too large or too complex for the verifier",
        libc::ENOSPC => "ENOSPC: the verifier log or a map is full",
        libc::ENOMEM => "ENOMEM: out of memory (locked memory limit?)",
        libc::EBUSY => "EBUSY: already in use (another program is attached)",
        libc::EEXIST => "EEXIST: already exists",
        libc::EOPNOTSUPP => "EOPNOTSUPP: not supported by this driver or kernel",
        libc::ENODEV => "ENODEV: no such device",
        libc::EAGAIN => "EAGAIN: interrupted (a signal arrived while the kernel worked)",
        libc::EINTR => "EINTR: interrupted by a signal",
        libc::EFAULT => "EFAULT: the kernel could not read or write a buffer",
        524 => "ENOTSUPP (524): the kernel cannot do this here (JIT or helper unavailable?)",
        _ => {
            return std::borrow::Cow::Owned(format!(
                "errno {errno}: {}",
                std::io::Error::from_raw_os_error(errno)
            ));
        }
    };
    std::borrow::Cow::Borrowed(words)
}
