//! `moat fw detach` as an operation: goes by the pins (the kernel's state),
//! not by the state file, and returns only once the hooks no longer run
//! moat's programs (BPF_LINK_DETACH, then checked).

use anyhow::{Context, Result, bail};

use super::{
    apply::{LOCK_WAIT, mode_from_file},
    state::{self, FwLock, KernelIface, Paths, StagedState, StateFile, read_state_file},
};

/// What a detach did.
#[derive(Clone, Debug, Default)]
pub struct DetachReport {
    /// Interfaces detached.
    pub detached: Vec<String>,
    /// No interface is left: programs, links, maps and pins are gone.
    pub removed_all: bool,
    /// There was nothing to detach (no pins at all).
    pub nothing: bool,
    /// Things that did not work out but do not matter to the kernel (a state
    /// file that could not be removed or rewritten).
    pub warnings: Vec<String>,
}

/// Detaches the firewall from `interfaces` (all if empty).
pub fn detach_at(paths: &Paths, interfaces: &[String]) -> Result<DetachReport> {
    let mut r = DetachReport::default();
    if !paths.exists() {
        if let Some(why) = state::remove_state(paths) {
            r.warnings
                .push(format!("could not remove the stale state file: {why}"));
        }
        r.nothing = true;
        return Ok(r);
    }
    let lock = FwLock::acquire(paths, "moat fw detach", LOCK_WAIT)?;
    let file = read_state_file(paths);
    let kernel = state::Kernel::read(paths, |i| mode_from_file(&file, i));
    let (gone, keep): (Vec<&KernelIface>, Vec<&KernelIface>) = kernel
        .interfaces
        .iter()
        .partition(|k| interfaces.is_empty() || interfaces.contains(&k.iface.name));
    if gone.is_empty() && !interfaces.is_empty() {
        bail!("the firewall is not attached to {}", interfaces.join(", "));
    }
    for k in &gone {
        // Where the load balancer is chained behind the firewall, the XDP
        // link goes back to it instead of going away.
        let handed = k.xdp.is_some() && crate::chain::hand_back(paths, &k.iface)?;
        for l in k.xdp.iter().filter(|_| !handed).chain(k.tc.iter()) {
            state::detach_link(&l.path)?;
        }
    }
    r.detached = gone.iter().map(|k| k.iface.name.clone()).collect();
    if keep.is_empty() {
        drop(lock);
        std::fs::remove_dir_all(&paths.pins)
            .with_context(|| format!("removing {}", paths.pins.display()))?;
        if let Some(parent) = paths.pins.parent() {
            let _ = std::fs::remove_dir(parent); // only if empty
        }
        r.removed_all = true;
        if let Some(why) = state::remove_state(paths) {
            r.warnings.push(format!(
                "could not remove the state file ({why}); it is stale and ignored (status goes by the kernel)"
            ));
        }
    } else if let StateFile::Ok(mut st) = file {
        st.interfaces
            .retain(|i| keep.iter().any(|k| k.iface.same_place(i)));
        if let Err(e) = StagedState::write(paths, &st).and_then(StagedState::commit) {
            r.warnings.push(format!(
                "could not update the state file ({e:#}); status goes by the kernel"
            ));
        }
    }
    Ok(r)
}
