//! The few bpf(2) commands moat needs that aya 0.14 does not expose on a
//! pinned link: open a pin, ask a link what it runs, point it at another
//! program (rollback), and detach it at once (BPF_LINK_DETACH: the hook stops
//! running the program before the call returns, unlike dropping the last
//! reference, which frees the link later from a workqueue).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Result, anyhow};

const BPF_OBJ_GET: u64 = 7;
const BPF_PROG_GET_FD_BY_ID: u64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u64 = 15;
const BPF_LINK_UPDATE: u64 = 29;
const BPF_LINK_DETACH: u64 = 34;
const BPF_F_REPLACE: u32 = 1 << 2;

pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

/// union bpf_attr, large enough for every command used here, zero-filled.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: u64, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: attr points at 128 valid bytes laid out as union bpf_attr for
    // `cmd`; the kernel reads (and for GET_INFO writes through the pointer
    // inside) only memory we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_OBJ_GET: a new fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{}: NUL in path", path.display()))?;
    let mut a = Attr::new();
    a.u64_at(0, c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut a)
        .map(owned)
        .map_err(|e| anyhow!("opening pin {}: {e}", path.display()))
}

/// BPF_PROG_GET_FD_BY_ID.
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32_at(0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .map(owned)
        .map_err(|e| anyhow!("opening program id {id}: {e}"))
}

/// What a link is and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Interface of an XDP or TCX link; 0 once the link is detached (or its
    /// interface is gone).
    pub ifindex: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD on a link.
pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) a union whose
    // xdp and tcx members both start with ifindex.
    let mut info = [0u64; 32];
    let mut a = Attr::new();
    a.u32_at(0, fd.as_raw_fd() as u32)
        .u32_at(4, std::mem::size_of_val(&info) as u32)
        .u64_at(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map_err(|e| anyhow!("reading link info: {e}"))?;
    let w = |i: usize| -> u32 {
        let b = info[i / 2].to_ne_bytes();
        let o = (i % 2) * 4;
        u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    };
    let link_type = w(0);
    let ifindex = match link_type {
        BPF_LINK_TYPE_XDP | BPF_LINK_TYPE_TCX => w(4),
        _ => 0,
    };
    Ok(LinkInfo {
        link_type,
        id: w(1),
        prog_id: w(2),
        ifindex,
    })
}

/// BPF_LINK_UPDATE: the link runs `new_prog` from now on (atomically),
/// provided it still runs `old_prog` when given.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let mut a = Attr::new();
    a.u32_at(0, link.as_raw_fd() as u32)
        .u32_at(4, new_prog.as_raw_fd() as u32);
    if let Some(old) = old_prog {
        a.u32_at(8, BPF_F_REPLACE)
            .u32_at(12, old.as_raw_fd() as u32);
    }
    bpf(BPF_LINK_UPDATE, &mut a)
        .map(|_| ())
        .map_err(|e| anyhow!("BPF_LINK_UPDATE: {e}"))
}

/// BPF_LINK_DETACH: the hook stops running the link's program now; the link
/// object lives on (defunct) until its last reference goes.
pub fn link_detach(link: BorrowedFd<'_>) -> Result<()> {
    let mut a = Attr::new();
    a.u32_at(0, link.as_raw_fd() as u32);
    match bpf(BPF_LINK_DETACH, &mut a) {
        Ok(_) => Ok(()),
        // Already detached (its interface went away, or a detach raced us).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        Err(e) => Err(anyhow!("BPF_LINK_DETACH: {e}")),
    }
}

const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;
const BPF_OBJ_PIN: u64 = 6;

/// BPF_MAP_UPDATE_ELEM of a program array: slot `key` runs `prog` from now
/// on (an atomic replacement of whatever was there).
pub fn prog_array_set(map: BorrowedFd<'_>, key: u32, prog: BorrowedFd<'_>) -> Result<()> {
    let value = prog.as_raw_fd() as u32;
    let mut a = Attr::new();
    a.u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, &key as *const u32 as u64)
        .u64_at(16, &value as *const u32 as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a)
        .map(|_| ())
        .map_err(|e| anyhow!("setting program array slot {key}: {e}"))
}

/// The id of the program in slot `key` of a program array, if any.
pub fn prog_array_get(map: BorrowedFd<'_>, key: u32) -> Option<u32> {
    let mut id = 0u32;
    let mut a = Attr::new();
    a.u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, &key as *const u32 as u64)
        .u64_at(16, &mut id as *mut u32 as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut a).ok().map(|_| id)
}

/// BPF_MAP_DELETE_ELEM (a missing element is not an error).
pub fn map_delete(map: BorrowedFd<'_>, key: u32) -> Result<()> {
    let mut a = Attr::new();
    a.u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, &key as *const u32 as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(anyhow!("deleting map element {key}: {e}")),
    }
}

/// BPF_OBJ_PIN: pins the object behind `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{}: NUL in path", path.display()))?;
    let mut a = Attr::new();
    a.u64_at(0, c.as_ptr() as u64)
        .u32_at(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a)
        .map(|_| ())
        .map_err(|e| anyhow!("pinning {}: {e}", path.display()))
}

/// The id of the program behind `fd`.
pub fn prog_id(fd: BorrowedFd<'_>) -> Result<u32> {
    // struct bpf_prog_info: type, id, ...
    let mut info = [0u64; 32];
    let mut a = Attr::new();
    a.u32_at(0, fd.as_raw_fd() as u32)
        .u32_at(4, std::mem::size_of_val(&info) as u32)
        .u64_at(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map_err(|e| anyhow!("reading program info: {e}"))?;
    let b = info[0].to_ne_bytes();
    Ok(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]))
}
