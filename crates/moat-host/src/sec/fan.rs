//! fanotify plumbing shared by `moat guard` (open and exec rules) and
//! `moat watch --file`: marks, the marking of every directory below a set
//! of prefixes, and the loop that reads permission events and answers them.

use std::{
    collections::HashSet,
    fs,
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};

/// A fanotify group for permission events (non-blocking, thread ids,
/// `extra` FAN_* init flags), its event fds read-only.
pub(crate) fn perm_group(extra: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_REPORT_TID
                | extra,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        bail!("fanotify_init: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by fanotify_init and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn fan_mark(fd: RawFd, flags: u32, mask: u64, path: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fd is a fanotify group, c a valid path.
    let rc = unsafe {
        libc::fanotify_mark(
            fd,
            libc::FAN_MARK_ADD | flags,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Visits every directory below `roots` once (by device and inode, so a
/// bind mount of a directory inside itself ends the walk), without following
/// symlinks; `visit` says whether to go below the directory.
pub(crate) fn walk_dirs(
    roots: &[PathBuf],
    mut visit: impl FnMut(&Path, (u64, u64)) -> Result<bool>,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut stack = roots.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        let id = (md.dev(), md.ino());
        if !md.is_dir() || !seen.insert(id) || !visit(&d, id)? {
            continue;
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    Ok(())
}

/// Marks (`mask`, on each directory: FAN_EVENT_ON_CHILD covers its files)
/// every directory below `roots` not in `marked` yet, at most `max` in all;
/// returns how many were left unmarked for lack of room. The walk opens
/// the directories it lists, so `mask` must not hold FAN_ONDIR (a
/// permission event for its own open would wait for its own answer).
pub(crate) fn mark_dirs(
    fd: RawFd,
    roots: &[PathBuf],
    marked: &mut HashSet<(u64, u64)>,
    mask: u64,
    max: usize,
) -> Result<usize> {
    debug_assert_eq!(mask & libc::FAN_ONDIR, 0);
    let mut left = 0;
    walk_dirs(roots, |d, id| {
        if !marked.contains(&id) {
            if marked.len() >= max {
                left += 1;
                return Ok(false);
            }
            fan_mark(fd, 0, mask, &d.to_string_lossy())
                .map_err(|e| anyhow!("fanotify mark on {}: {e}", d.display()))?;
            marked.insert(id);
        }
        Ok(true)
    })?;
    Ok(left)
}

/// Reads every pending permission event of group `fd` (non-blocking) and
/// answers each with `deny(event, its fd)`: true denies, false allows.
pub(crate) fn answer_all(
    fd: RawFd,
    buf: &mut [u8],
    deny: &mut dyn FnMut(&libc::fanotify_event_metadata, &OwnedFd) -> bool,
) {
    let ml = std::mem::size_of::<libc::fanotify_event_metadata>();
    loop {
        // SAFETY: reads into buf.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return; // EAGAIN: nothing (more) pending
        }
        let n = n as usize;
        let mut off = 0;
        while off + ml <= n {
            // SAFETY: a fanotify_event_metadata lies at off (length checked).
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if (m.event_len as usize) < ml {
                break;
            }
            off += m.event_len as usize;
            if m.fd < 0 {
                continue;
            }
            // SAFETY: the event's fd is ours to close.
            let efd = unsafe { OwnedFd::from_raw_fd(m.fd) };
            let no = deny(&m, &efd);
            let resp = libc::fanotify_response {
                fd: m.fd,
                response: if no { libc::FAN_DENY } else { libc::FAN_ALLOW },
            };
            // SAFETY: writes one response struct.
            unsafe {
                libc::write(
                    fd,
                    (&resp as *const libc::fanotify_response).cast(),
                    std::mem::size_of::<libc::fanotify_response>(),
                )
            };
            drop(efd);
        }
    }
}
