//! `moat fw apply` as an operation: compile within a memory budget, take the
//! lock, hand out a generation the kernel records, load and fill a new
//! instance, stage the state file, swap every interface (all or none: the
//! ones already switched are rolled back), then put the state in place.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    maps::PerCpuArray,
    programs::{
        SchedClassifier, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachType},
        xdp::XdpLink,
    },
};
use moat_abi::{count::CountValue, fw as abi};
use moat_core::{
    counters::human,
    fw::{Policy, compile, encode::RuleId, policy},
};

use super::{
    instance::{FwInstance, Progress, sum_percpu},
    state::{
        self, FwLock, Iface, Kernel, Paths, RuleInfo, StagedState, State, StateFile,
        last_generation, pinned_map, read_state_file,
    },
};
use crate::{bpfsys, count::Mode, loader::LogOpts, sys};

/// Loads and compiles a policy within the default memory budget; errors
/// come back as `FILE:LINE:COL: reason` lines.
pub fn load_policy(path: &Path) -> Result<(Policy, compile::Compiled)> {
    load_policy_within(path, None)
}

/// Loads and compiles a policy whose maps must fit `budget` bytes of kernel
/// memory (default: [`default_budget`]).
pub fn load_policy_within(path: &Path, budget: Option<u64>) -> Result<(Policy, compile::Compiled)> {
    let p = policy::load(path).map_err(|e| {
        anyhow!(
            "{e}\n{} error(s) in the policy; nothing was changed",
            e.total()
        )
    })?;
    let budget = budget.unwrap_or_else(default_budget);
    let c = compile::compile_within(
        &p,
        usize::try_from(budget).unwrap_or(usize::MAX),
        &mut |_, _, _| {},
    )
    .map_err(|o| anyhow!(over_budget_message(&p, &o)))?;
    Ok((p, c))
}

/// Default memory budget for a policy's maps: 1 GiB, or an eighth of the
/// machine's memory if that is less.
pub fn default_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    let gib = 1u64 << 30;
    total.map_or(gib, |kb| gib.min(kb * 1024 / 8))
}

/// Why a policy does not fit, with the rules that make it big.
fn over_budget_message(p: &Policy, o: &compile::OverBudget) -> String {
    let top: Vec<String> = o
        .by_rule
        .iter()
        .take(3)
        .map(|&(r, n, k)| {
            let rule = &p.rules[r];
            format!(
                "{} entries decided by rule {:?} ({}:{}) in {} address classes",
                n,
                rule.name,
                p.source.display(),
                rule.line,
                k
            )
        })
        .collect();
    let line = o.by_rule.first().map_or(1, |&(r, _, _)| p.rules[r].line);
    format!(
        "{}:{line}:1: the policy needs about {} of kernel memory (about {} map entries), more than the budget of {} (--memory-budget to change it); in the first {} of {} address classes: {}; each address class repeats the port table of the rules that select it, so rules with many ports over many distinct address sets multiply; nothing was changed",
        p.source.display(),
        human(o.need as f64, "B"),
        o.entries,
        human(o.budget as f64, "B"),
        o.classes_compiled,
        o.classes,
        top.join("; "),
    )
}

pub struct ApplyOpts {
    pub policy: PathBuf,
    pub interfaces: Vec<String>,
    pub netns: Option<String>,
    pub mode: Mode,
    pub quiet: bool,
    /// Kernel memory the policy's maps may take (default: [`default_budget`]).
    pub memory_budget: Option<u64>,
}

/// How long an apply or detach waits for another one to finish.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `moat fw apply` with pins and state under `paths` (benchmarks, tests).
///
/// Order, so that a failure anywhere changes nothing that runs: compile;
/// take the lock; read what the kernel runs; hand out the next generation
/// (recorded in the kernel before any packet can see it); load and fill the
/// new instance; write the new state file next to its place (a full or
/// read-only /run fails here); swap every interface, rolling back the ones
/// already swapped if one fails; only then put the state file in place.
pub fn apply_at(
    paths: &Paths,
    o: &ApplyOpts,
    log: &LogOpts,
    progress: Progress<'_>,
) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let (p, c) = load_policy_within(&o.policy, o.memory_budget)?;
    sys::require_privileges("moat fw apply")?;
    sys::ensure_bpffs()?;
    let _lock = FwLock::acquire(paths, "moat fw apply", LOCK_WAIT)?;
    let file = read_state_file(paths);
    if let StateFile::Damaged(why) = &file {
        eprintln!(
            "warning: the state file is damaged ({why}); going by what the kernel runs (it is rewritten by this apply)"
        );
    }
    let kernel = Kernel::read(paths, |i| mode_from_file(&file, i));
    let running: Vec<Iface> = kernel.interfaces.iter().map(|k| k.iface.clone()).collect();
    let mode = match o.mode {
        Mode::Native => "native",
        Mode::Skb => "skb",
    };
    let ifaces: Vec<Iface> = if !o.interfaces.is_empty() || !p.interfaces.is_empty() {
        let names = if o.interfaces.is_empty() {
            &p.interfaces
        } else {
            &o.interfaces
        };
        names
            .iter()
            .map(|n| Iface {
                name: n.clone(),
                netns: o.netns.clone(),
                mode: mode.into(),
            })
            .collect()
    } else if !running.is_empty() {
        running.clone()
    } else {
        bail!(
            "no interface to protect: give -i IFACE or `interfaces:` in {}",
            o.policy.display()
        );
    };
    // Check every interface exists before touching anything.
    for i in &ifaces {
        sys::in_netns(i.netns.as_deref(), || {
            crate::traffic::ifindex(&i.name).map(|_| ())
        })
        .with_context(|| format!("interface {}; nothing was changed", i.label()))?;
    }
    let generation = last_generation(paths, &kernel, &file)
        .wrapping_add(1)
        .max(1);
    let had_ct = paths.pins.join(abi::MAP_CT).exists();
    // Encoded once: the maps get its entries, the state file its sizes.
    let encoded = moat_core::fw::encode::Encoded::of(&p, &c);
    // Pins of another shape (conntrack max changed, an older moat's layout)
    // move aside; the new instance pins fresh ones and gets their contents.
    let upgrade = super::pins::Upgrade::prepare(&paths.pins, super::pins::ct_max(&p))?;
    // Conntrack kept from a firewall without this presence filter (an older
    // moat had none, or one of another size, just moved aside): the new
    // filter must learn its entries, before and after the swap (the old
    // program may add entries in between).
    let seed_filter = had_ct && !paths.pins.join(abi::MAP_CTSEEN).exists();
    let mut inst = FwInstance::load_encoded(
        &p,
        &encoded,
        encoded.sizes(),
        generation,
        &paths.pins,
        log,
        progress,
    )?;
    if !upgrade.is_empty() {
        upgrade.carry_over()?;
    }
    // From here on this generation is spent, whatever happens next.
    state::record_generation(&mut inst.bpf, generation)?;
    if seed_filter {
        inst.seed_ctseen()?;
    }
    carry_rule_counters(paths, file.state(), &p, &mut inst)?;
    let state = State {
        generation,
        policy: std::fs::canonicalize(&o.policy).unwrap_or_else(|_| o.policy.clone()),
        applied_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        default_ingress: p.default_ingress.name().into(),
        default_egress: p.default_egress.name().into(),
        rules: p
            .rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name.clone(),
                direction: r.direction.name().into(),
                action: r.action.name().into(),
                line: r.line,
            })
            .collect(),
        interfaces: ifaces.clone(),
        addr4_entries: c.addr4.len(),
        addr6_entries: c.addr6.len(),
        verdict_entries: c.verdicts.len(),
        classes: c.classes.len(),
        memory_bytes: encoded.memory_bytes(),
        maps: state::MapFill::of(&encoded, &encoded.sizes()),
    };
    let staged = StagedState::write(paths, &state)
        .map_err(|e| anyhow!("{e:#}; nothing was changed (the firewall runs as before)"))?;
    let t_fill = t0.elapsed();

    sys::private_dir(&paths.links())?;
    let mut done: Vec<Undo> = Vec::new();
    let mut report = Vec::new();
    for i in &ifaces {
        let r = sys::in_netns(i.netns.as_deref(), || {
            attach_or_swap(&mut inst, paths, i, o.mode)
        });
        match r {
            Ok(u) => {
                report.push(format!(
                    "{} ({})",
                    i.name,
                    if matches!(u, Undo::Swapped { .. }) {
                        "policy swapped"
                    } else {
                        "attached"
                    }
                ));
                done.push(u);
            }
            Err(e) => {
                let rb = rollback(paths, done);
                return Err(e.context(format!(
                    "attaching to {}; {rb}: nothing was changed (generation {generation} is spent and will not be reused)",
                    i.label()
                )));
            }
        }
    }
    if seed_filter {
        inst.seed_ctseen()?;
    }
    // Every hook runs the new instance: make it the one on record. A failure
    // from here on rolls the swap back too.
    let finish = (|| -> Result<()> {
        let tmp = paths.pins.join("rule_stats_new");
        let _ = std::fs::remove_file(&tmp);
        inst.bpf
            .map(abi::MAP_RULE_STATS)
            .ok_or_else(|| anyhow!("no rule stats map"))?
            .pin(&tmp)
            .map_err(|e| anyhow!("pinning rule counters: {e}"))?;
        std::fs::rename(&tmp, paths.rule_stats())?;
        staged.commit()
    })();
    if let Err(e) = finish {
        let rb = rollback(paths, done);
        return Err(e.context(format!("{rb}: nothing was changed")));
    }
    // What the old tables got until the swap is carried over too.
    let notes = upgrade.notes.clone();
    upgrade.commit()?;

    // Interfaces that ran the firewall and are not in the new set: detach.
    for i in running
        .iter()
        .filter(|r| !ifaces.iter().any(|n| n.same_place(r)))
    {
        for kind in ["xdp", "tc"] {
            // Where the load balancer is chained, the XDP link goes back to it.
            if kind == "xdp" && crate::chain::hand_back(paths, i)? {
                continue;
            }
            state::detach_link(&paths.link_pin(i, kind))?;
        }
        report.push(format!("{} (detached)", i.name));
    }
    Ok(ApplyReport {
        policy: o.policy.clone(),
        generation,
        rules: p.rules.len(),
        classes: c.classes.len(),
        entries: encoded.entries(),
        memory_bytes: encoded.memory_bytes(),
        default_ingress: p.default_ingress.name(),
        default_egress: p.default_egress.name(),
        interfaces: report,
        notes,
        total: t0.elapsed(),
        fill: t_fill,
        programs: inst
            .loaded
            .iter()
            .map(|l| (l.name.to_string(), l.id))
            .collect(),
    })
}

/// What an apply did.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub policy: PathBuf,
    pub generation: u32,
    pub rules: usize,
    pub classes: usize,
    pub entries: usize,
    pub memory_bytes: usize,
    pub default_ingress: &'static str,
    pub default_egress: &'static str,
    /// Each interface and what happened to it ("attached", "policy swapped", "detached").
    pub interfaces: Vec<String>,
    /// Pinned maps resized or replaced (conntrack max changed, older layout).
    pub notes: Vec<String>,
    pub total: std::time::Duration,
    /// Compile + load + fill (the rest of `total` is the swap).
    pub fill: std::time::Duration,
    /// (program name, id) of the instance now in force.
    pub programs: Vec<(String, u32)>,
}

pub fn mode_from_file(file: &StateFile, i: &Iface) -> Option<String> {
    file.state()?
        .interfaces
        .iter()
        .find(|s| s.same_place(i))
        .map(|s| s.mode.clone())
}

/// Seeds the new instance's per-rule counters with the running ones, by rule
/// name (and the defaults' with the defaults'), so hits survive an apply.
/// Packets counted by the old programs during the swap itself are not carried.
/// Without a readable state file the names are unknown: counters restart.
fn carry_rule_counters(
    paths: &Paths,
    old: Option<&State>,
    p: &Policy,
    inst: &mut FwInstance,
) -> Result<()> {
    let Some(old) = old else { return Ok(()) };
    let Ok(map) = pinned_map(&paths.rule_stats()) else {
        return Ok(());
    };
    let prev = sum_percpu(&PerCpuArray::<_, CountValue>::try_from(&map)?)?;
    let cpus = super::instance::cpus()?;
    let target = inst
        .bpf
        .map_mut(abi::MAP_RULE_STATS)
        .ok_or_else(|| anyhow!("no rule stats map"))?;
    let mut arr: PerCpuArray<_, CountValue> = PerCpuArray::try_from(target)?;
    let mut seed = |id: u32, v: CountValue| -> Result<()> {
        if v.packets == 0 {
            return Ok(());
        }
        let mut vals = vec![CountValue::default(); cpus];
        vals[0] = v;
        arr.set(id, aya::maps::PerCpuValues::try_from(vals)?, 0)?;
        Ok(())
    };
    seed(0, prev.first().copied().unwrap_or_default())?;
    for (i, r) in p.rules.iter().enumerate() {
        if let Some(j) = old.rules.iter().position(|o| o.name == r.name)
            && let Some(v) = prev.get(RuleId::of_rule(j).0 as usize)
        {
            seed(RuleId::of_rule(i).0, *v)?;
        }
    }
    Ok(())
}

/// How to undo one interface's part of an apply.
enum Undo {
    /// Its links ran these programs before (held open here: a program whose
    /// link moved on is freed once nothing references it): point them back.
    Swapped {
        iface: Iface,
        xdp_prog: OwnedFd,
        tc_prog: OwnedFd,
    },
    /// It had no firewall before: detach.
    Attached { iface: Iface },
}

/// Undoes what an apply did to these interfaces; says what it did.
fn rollback(paths: &Paths, done: Vec<Undo>) -> String {
    if done.is_empty() {
        return "no interface had been switched yet".into();
    }
    let mut said = Vec::new();
    for u in done.into_iter().rev() {
        match u {
            Undo::Swapped {
                iface,
                xdp_prog,
                tc_prog,
            } => {
                let r = (|| -> Result<()> {
                    for (kind, prog) in [("xdp", &xdp_prog), ("tc", &tc_prog)] {
                        let link = bpfsys::obj_get(&paths.link_pin(&iface, kind))?;
                        bpfsys::link_update(link.as_fd(), prog.as_fd(), None)?;
                    }
                    Ok(())
                })();
                said.push(match r {
                    Ok(()) => format!("{}: previous policy restored", iface.name),
                    Err(e) => format!(
                        "{}: could not restore the previous policy ({e:#})",
                        iface.name
                    ),
                });
            }
            Undo::Attached { iface } => {
                let r = ["xdp", "tc"].iter().try_for_each(|k| {
                    // Where the balancer ran first, its link goes back to it.
                    if *k == "xdp" && crate::chain::hand_back(paths, &iface)? {
                        return Ok(());
                    }
                    state::detach_link(&paths.link_pin(&iface, k))
                });
                said.push(match r {
                    Ok(()) => format!("{}: detached again", iface.name),
                    Err(e) => format!("{}: could not detach ({e:#})", iface.name),
                });
            }
        }
    }
    format!("rolled back ({})", said.join("; "))
}

/// Attaches the instance's programs to `i`, or swaps them into existing
/// pinned links (BPF_LINK_UPDATE: atomic per hook). Runs in i's netns.
fn attach_or_swap(inst: &mut FwInstance, paths: &Paths, i: &Iface, mode: Mode) -> Result<Undo> {
    let xdp_pin = paths.link_pin(i, "xdp");
    let tc_pin = paths.link_pin(i, "tc");
    let live = |pin: &Path| {
        bpfsys::obj_get(pin)
            .ok()
            .and_then(|fd| bpfsys::link_info(fd.as_fd()).ok())
            .filter(|l| l.ifindex != 0 && l.prog_id != 0)
    };
    if let (Some(x), Some(t)) = (live(&xdp_pin), live(&tc_pin)) {
        // Hold the programs running now, to be able to put them back.
        let old_xdp = bpfsys::prog_fd_by_id(x.prog_id)?;
        let old_tc = bpfsys::prog_fd_by_id(t.prog_id)?;
        let link: FdLink = PinnedLink::from_pin(&xdp_pin)
            .map_err(|e| anyhow!("opening {}: {e}", xdp_pin.display()))?
            .into();
        let link = XdpLink::try_from(link).map_err(|e| anyhow!("{}: {e}", xdp_pin.display()))?;
        inst.xdp()?
            .attach_to_link(link)
            .map_err(|e| anyhow!("updating the XDP link of {}: {e}", i.name))?;
        let tc = (|| -> Result<()> {
            let link: FdLink = PinnedLink::from_pin(&tc_pin)
                .map_err(|e| anyhow!("opening {}: {e}", tc_pin.display()))?
                .into();
            let link = SchedClassifierLink::try_from(link)
                .map_err(|e| anyhow!("{}: {e}", tc_pin.display()))?;
            inst.tc()?
                .attach_to_link(link)
                .map_err(|e| anyhow!("updating the TC link of {}: {e}", i.name))?;
            Ok(())
        })();
        if let Err(e) = tc {
            // Put the XDP hook back to what it ran: this interface is unchanged.
            let back = bpfsys::obj_get(&xdp_pin)
                .and_then(|l| bpfsys::link_update(l.as_fd(), old_xdp.as_fd(), None));
            return Err(match back {
                Ok(()) => e,
                Err(b) => e.context(format!("and restoring its XDP program failed: {b:#}")),
            });
        }
        return Ok(Undo::Swapped {
            iface: i.clone(),
            xdp_prog: old_xdp,
            tc_prog: old_tc,
        });
    }
    // Fresh attach: XDP (ingress), then TCX egress; pin both links. Stale
    // pins (a half-removed or defunct firewall) are detached first.
    state::detach_link(&xdp_pin)?;
    state::detach_link(&tc_pin)?;
    // The load balancer runs here: its link moves to the firewall, which
    // hands it every packet it passes (moat-host::chain).
    let prog = inst.xdp()?.fd()?.as_fd().try_clone_to_owned()?;
    if crate::chain::take_over(paths, i, prog.as_fd())? {
        if let Err(e) = attach_tc(inst, i, &tc_pin) {
            let _ = crate::chain::hand_back(paths, i);
            return Err(e);
        }
        return Ok(Undo::Attached { iface: i.clone() });
    }
    let xdp: &mut Xdp = inst.xdp()?;
    let id = xdp.attach(
        &i.name,
        match mode {
            Mode::Native => aya::programs::XdpMode::Driver,
            Mode::Skb => aya::programs::XdpMode::Skb,
        },
    );
    let id = match id {
        Ok(id) => id,
        Err(e) => bail!(xdp_attach_error(e, &i.name, mode)),
    };
    let link = xdp.take_link(id)?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("XDP link of {} is not a bpf_link: {e}", i.name))?;
    fd.pin(&xdp_pin)
        .map_err(|e| anyhow!("pinning {}: {e}", xdp_pin.display()))?;
    if let Err(e) = attach_tc(inst, i, &tc_pin) {
        // Leave nothing half-attached.
        let _ = state::detach_link(&xdp_pin);
        return Err(e);
    }
    Ok(Undo::Attached { iface: i.clone() })
}

/// Attaches the TC egress program to `i` and pins its link at `tc_pin`.
fn attach_tc(inst: &mut FwInstance, i: &Iface, tc_pin: &Path) -> Result<()> {
    let tc: &mut SchedClassifier = inst.tc()?;
    let id = tc
        .attach(&i.name, TcAttachType::Egress)
        .map_err(|e| anyhow!("attaching {} to {} egress: {e}", abi::PROG_TC, i.name))?;
    let link = tc.take_link(id)?;
    let fd: FdLink = link.try_into().map_err(|e| {
        anyhow!(
            "TC link of {} is not a bpf_link (kernel without TCX, < 6.6?): {e}",
            i.name
        )
    })?;
    fd.pin(tc_pin)
        .map_err(|e| anyhow!("pinning {}: {e}", tc_pin.display()))?;
    Ok(())
}

fn xdp_attach_error(e: aya::programs::ProgramError, iface: &str, mode: Mode) -> String {
    use aya::programs::ProgramError;
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
            "{iface} already has an XDP program that is not moat's firewall; moat will not replace it (see `ip -d link show dev {iface}`)"
        ),
        Some(n @ (libc::EOPNOTSUPP | libc::EINVAL)) if mode == Mode::Native => {
            format!(
                "the driver of {iface} lacks native XDP ({}): try --mode skb",
                sys::errno_words(n)
            )
        }
        _ => format!("attaching {} to {iface}: {e}", abi::PROG_XDP),
    }
}
