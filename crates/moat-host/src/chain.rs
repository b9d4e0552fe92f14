//! The firewall and the load balancer on one interface. The kernel runs one
//! XDP program per interface, so moat chains its families itself: the
//! interface's XDP link runs the firewall (`fw_xdp`), which on a pass
//! tail-calls slot 0 of its pinned program array `fw_next`: the balancer
//! (`lb_xdp`). The balancer runs only on interfaces listed in its
//! `lb_ifaces` (fw_next is one slot for every firewall interface).
//!
//! Where the balancer is chained behind the firewall, its program is pinned
//! at `lb/links/NETNS@IFACE@chain` (a marker the kernel holds: which
//! interfaces, and what runs there). Every transition keeps the hook
//! running: attaching the firewall where the balancer runs moves the
//! balancer's link to the firewall (BPF_LINK_UPDATE, then the pin is
//! renamed), and detaching the firewall gives the link back.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};

use crate::{
    bpfsys,
    fw::state::{Iface, Paths},
};

/// The other family's paths next to `p` (same pin and state roots).
pub fn sibling(p: &Paths, family: &str) -> Paths {
    let up = |d: &Path| d.parent().map(Path::to_path_buf).unwrap_or_default();
    Paths::family(&up(&p.pins), &up(&p.state_dir), family)
}

/// Is a pinned XDP link at `pin` attached (and running a program)?
pub fn link_live(pin: &Path) -> Option<bpfsys::LinkInfo> {
    bpfsys::obj_get(pin)
        .ok()
        .and_then(|fd| bpfsys::link_info(fd.as_fd()).ok())
        .filter(|l| l.ifindex != 0 && l.prog_id != 0)
}

/// Where the balancer's chained program is pinned for `i`.
pub fn marker(lb: &Paths, i: &Iface) -> PathBuf {
    lb.link_pin(i, "chain")
}

fn fw_next(fw: &Paths) -> Result<OwnedFd> {
    bpfsys::obj_get(&fw.pins.join(moat_abi::fw::MAP_NEXT))
        .map_err(|e| anyhow!("the firewall's program array: {e:#}"))
}

/// The program the firewall hands passed packets to, if any.
pub fn next_prog(fw: &Paths) -> Option<u32> {
    let m = fw_next(fw).ok()?;
    bpfsys::prog_array_get(m.as_fd(), 0)
}

/// The firewall hands its passed packets to `prog` from now on.
pub fn set_next(fw: &Paths, prog: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    let m = fw_next(fw)?;
    bpfsys::prog_array_set(m.as_fd(), 0, prog)
}

/// The firewall passes packets to the kernel again.
pub fn clear_next(fw: &Paths) -> Result<()> {
    match fw_next(fw) {
        Ok(m) => bpfsys::map_delete(m.as_fd(), 0),
        Err(_) => Ok(()),
    }
}

/// Pins `prog` as the chain marker of `i` (replacing one that is there).
pub fn pin_marker(lb: &Paths, i: &Iface, prog: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    let path = marker(lb, i);
    crate::sys::private_dir(&lb.links())?;
    let tmp = path.with_file_name(format!(
        "{}-new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("chain")
    ));
    let _ = std::fs::remove_file(&tmp);
    bpfsys::obj_pin(prog, &tmp)?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| anyhow!("renaming {} to {}: {e}", tmp.display(), path.display()))
}

/// The interfaces where the balancer is chained behind a running firewall:
/// (marker pin name, netns, interface).
pub fn chained(lb: &Paths) -> Vec<(String, Option<String>, String)> {
    let fw = sibling(lb, "fw");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(lb.links()) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('@').collect();
        if parts.len() != 3 || parts[2] != "chain" {
            continue;
        }
        let i = Iface {
            name: parts[1].to_string(),
            netns: (parts[0] != "host").then(|| parts[0].to_string()),
            mode: String::new(),
        };
        if link_live(&fw.link_pin(&i, "xdp")).is_some() {
            out.push((name.clone(), i.netns, i.name));
        }
    }
    out.sort();
    out
}

/// The firewall is leaving interface `i`: if the balancer is chained there,
/// the XDP link goes back to the balancer (its pin moves to the balancer's
/// links) and true is returned; else false (the caller detaches the link).
pub fn hand_back(fw: &Paths, i: &Iface) -> Result<bool> {
    let lb = sibling(fw, "lb");
    let m = marker(&lb, i);
    let Ok(prog) = bpfsys::obj_get(&m) else {
        return Ok(false);
    };
    let link_pin = fw.link_pin(i, "xdp");
    let link = bpfsys::obj_get(&link_pin)?;
    bpfsys::link_update(link.as_fd(), prog.as_fd(), None)?;
    crate::sys::private_dir(&lb.links())?;
    std::fs::rename(&link_pin, lb.link_pin(i, "xdp"))
        .map_err(|e| anyhow!("moving {} to the balancer: {e}", link_pin.display()))?;
    let _ = std::fs::remove_file(&m);
    Ok(true)
}

/// The firewall is coming to interface `i` where the balancer's own link
/// runs: chain the balancer behind `fw_prog` and move the link to the
/// firewall. Returns false if the balancer does not run there.
pub fn take_over(fw: &Paths, i: &Iface, fw_prog: std::os::fd::BorrowedFd<'_>) -> Result<bool> {
    let lb = sibling(fw, "lb");
    let lb_pin = lb.link_pin(i, "xdp");
    let Some(l) = link_live(&lb_pin) else {
        return Ok(false);
    };
    let lb_prog = bpfsys::prog_fd_by_id(l.prog_id)?;
    set_next(fw, lb_prog.as_fd())?;
    pin_marker(&lb, i, lb_prog.as_fd())?;
    let link = bpfsys::obj_get(&lb_pin)?;
    if let Err(e) = bpfsys::link_update(link.as_fd(), fw_prog, None) {
        let _ = std::fs::remove_file(marker(&lb, i));
        return Err(e);
    }
    crate::sys::private_dir(&fw.links())?;
    if let Err(e) = std::fs::rename(&lb_pin, fw.link_pin(i, "xdp")) {
        // Put it back as it was.
        let _ = bpfsys::link_update(link.as_fd(), lb_prog.as_fd(), None);
        let _ = std::fs::remove_file(marker(&lb, i));
        return Err(anyhow!("moving {} to the firewall: {e}", lb_pin.display()));
    }
    Ok(true)
}
