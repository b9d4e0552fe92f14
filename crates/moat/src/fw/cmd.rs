//! `moat fw check | apply | status | explain | detach`.
//!
//! State (see [`super::state`]): the pinned links hold the programs, so the
//! firewall keeps running after the command exits; what runs is read from the
//! kernel, the state file only adds names.

use std::{
    io::IsTerminal,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    maps::{Map, MapData, PerCpuArray},
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
    fw::{Action, Dir, Flow, Policy, compile, policy, reference},
};
use serde_json::json;
use std::os::fd::{AsFd, OwnedFd};

pub use super::state::{Iface, Paths, RuleInfo, State};
use super::{
    instance::{FwInstance, sum_percpu},
    state::{
        self, FwLock, Kernel, KernelIface, StagedState, StateFile, last_generation, read_state_file,
    },
};
use crate::{bpfsys, count::Mode, loader::LogOpts, sys};
use moat_core::fw::encode::RuleId;

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

/// Reads a size: `1000000`, `512k`, `256MiB`, `2G` (k/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size (e.g. 512MiB, 2G, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("{s:?}: unknown size unit {u:?} (use k, M, G or T)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{s:?} is too large"))
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

/// `moat fw check`: validate and compile, no privileges needed.
pub fn check(path: &Path, json_out: bool, budget: Option<u64>) -> Result<()> {
    let t = Instant::now();
    let (p, c) = load_policy_within(path, budget)?;
    let e = moat_core::fw::encode::Encoded::of(&p, &c);
    if json_out {
        println!(
            "{}",
            json!({
                "policy": path,
                "ok": true,
                "rules": p.rules.len(),
                "classes": c.classes.len(),
                "addr4_entries": c.addr4.len(),
                "addr6_entries": c.addr6.len(),
                "verdict_entries": c.verdicts.len(),
                "maps": e.map_entries().iter().map(|(n, k)| ((*n).to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
                "memory_bytes": e.memory_bytes(),
                "compile_ms": t.elapsed().as_millis() as u64,
            })
        );
        return Ok(());
    }
    println!(
        "{}: ok ({} rules, compiled in {:.0?})",
        path.display(),
        p.rules.len(),
        t.elapsed()
    );
    println!(
        "default: ingress {}, egress {}",
        p.default_ingress.name(),
        p.default_egress.name()
    );
    if !p.interfaces.is_empty() {
        println!("interfaces: {}", p.interfaces.join(", "));
    }
    println!(
        "\n  id   rule                 dir      action  prefixes  proto                ports/types"
    );
    for (i, r) in p.rules.iter().enumerate() {
        let prefixes = r
            .remote
            .as_ref()
            .map_or("any".to_string(), |v| v.len().to_string());
        let protos: Vec<String> = r
            .protos
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect();
        let l4 = match (&r.ports, &r.icmp_types) {
            (Some(ps), _) => ps
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            (_, Some(ts)) => format!("{} icmp type(s)", ts.len()),
            _ => "all".into(),
        };
        println!(
            "  {:<4} {:<20} {:<8} {:<6} {:>9}  {:<20} {}{}",
            i + 1,
            r.name,
            r.direction.name(),
            r.action.name(),
            prefixes,
            protos.join(","),
            l4,
            if r.except.is_empty() {
                String::new()
            } else {
                format!(" (except {} prefixes)", r.except.len())
            }
        );
    }
    for (name, n) in &p.sets {
        println!("  set @{name}: {n} entries");
    }
    println!("\naddress classes: {} (class 0 = no rule)", c.classes.len());
    for (i, rules) in c.classes.iter().enumerate().skip(1).take(10) {
        let names: Vec<&str> = rules
            .iter()
            .map(|r| p.rules[*r as usize].name.as_str())
            .collect();
        println!("  class {i}: {}", names.join(", "));
    }
    if c.classes.len() > 11 {
        println!("  ... {} more", c.classes.len() - 11);
    }
    println!(
        "map entries (host addresses and single/every-port verdicts in hash maps, the rest in LPM tries):"
    );
    for (n, k) in e.map_entries() {
        println!("  {n:<12} {k:>9}");
    }
    println!(
        "kernel memory for the policy maps: about {}",
        human(e.memory_bytes() as f64, "B")
    );
    Ok(())
}

/// Prints progress on stderr (one updating line on a terminal).
fn progress_printer(quiet: bool) -> impl FnMut(&str, usize, usize) {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |what: &str, done: usize, total: usize| {
        if quiet || total < 100_000 {
            return;
        }
        if done < total && last.elapsed().as_millis() < 200 {
            return;
        }
        last = Instant::now();
        let pct = done * 100 / total.max(1);
        let bar: String = (0..30)
            .map(|i| if i * 100 / 30 < pct { '#' } else { '.' })
            .collect();
        if tty {
            eprint!("\r  {what:<22} [{bar}] {pct:>3}% {done}/{total}");
            if done == total {
                eprintln!();
            }
        } else if done == total {
            eprintln!("  {what}: {done}/{total}");
        }
    }
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

/// `moat fw apply`.
pub fn apply(o: &ApplyOpts, log: &LogOpts) -> Result<()> {
    apply_at(&Paths::from_env(), o, log)
}

/// How long an apply or detach waits for another one to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `moat fw apply` with pins and state under `paths` (benchmarks, tests).
///
/// Order, so that a failure anywhere changes nothing that runs: compile;
/// take the lock; read what the kernel runs; hand out the next generation
/// (recorded in the kernel before any packet can see it); load and fill the
/// new instance; write the new state file next to its place (a full or
/// read-only /run fails here); swap every interface, rolling back the ones
/// already swapped if one fails; only then put the state file in place.
pub fn apply_at(paths: &Paths, o: &ApplyOpts, log: &LogOpts) -> Result<()> {
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
    let mut progress = progress_printer(o.quiet);
    // Conntrack kept from a firewall without the presence filter (an older
    // moat): the new filter must learn its entries, before and after the
    // swap (the old program may add entries in between).
    let seed_filter =
        paths.pins.join(abi::MAP_CT).exists() && !paths.pins.join(abi::MAP_CTSEEN).exists();
    let mut inst = FwInstance::load(&p, &c, generation, &paths.pins, log, &mut progress)?;
    // From here on this generation is spent, whatever happens next.
    state::record_generation(&mut inst.bpf, generation)?;
    if seed_filter {
        inst.seed_ctseen()?;
    }
    carry_rule_counters(paths, file.state(), &p, &mut inst)?;
    let encoded = moat_core::fw::encode::Encoded::of(&p, &c);
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
    // Interfaces that ran the firewall and are not in the new set: detach.
    for i in running
        .iter()
        .filter(|r| !ifaces.iter().any(|n| n.same_place(r)))
    {
        for kind in ["xdp", "tc"] {
            state::detach_link(&paths.link_pin(i, kind))?;
        }
        report.push(format!("{} (detached)", i.name));
    }
    ApplyReport {
        policy: o.policy.clone(),
        generation,
        rules: p.rules.len(),
        classes: c.classes.len(),
        entries: encoded.entries(),
        memory_bytes: encoded.memory_bytes(),
        default_ingress: p.default_ingress.name(),
        default_egress: p.default_egress.name(),
        interfaces: report,
        total: t0.elapsed(),
        fill: t_fill,
        programs: inst
            .loaded
            .iter()
            .map(|l| (l.name.to_string(), l.id))
            .collect(),
    }
    .print();
    Ok(())
}

/// What an apply did, for the command line.
struct ApplyReport {
    policy: PathBuf,
    generation: u32,
    rules: usize,
    classes: usize,
    entries: usize,
    memory_bytes: usize,
    default_ingress: &'static str,
    default_egress: &'static str,
    interfaces: Vec<String>,
    total: std::time::Duration,
    fill: std::time::Duration,
    programs: Vec<(String, u32)>,
}

impl ApplyReport {
    fn print(&self) {
        println!(
            "applied {} (generation {}): {} rules, {} address classes, {} map entries (~{}), default ingress {} / egress {}",
            self.policy.display(),
            self.generation,
            self.rules,
            self.classes,
            self.entries,
            human(self.memory_bytes as f64, "B"),
            self.default_ingress,
            self.default_egress
        );
        println!("interfaces: {}", self.interfaces.join(", "));
        println!(
            "took {:.2?} (compile + load + fill {:.2?}, swap {:.2?}); programs: {}",
            self.total,
            self.fill,
            self.total - self.fill,
            self.programs
                .iter()
                .map(|(n, id)| format!("{n} id {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn mode_from_file(file: &StateFile, i: &Iface) -> Option<String> {
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
                let r = ["xdp", "tc"]
                    .iter()
                    .try_for_each(|k| state::detach_link(&paths.link_pin(&iface, k)));
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
    let attach_tc = |inst: &mut FwInstance| -> Result<()> {
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
        fd.pin(&tc_pin)
            .map_err(|e| anyhow!("pinning {}: {e}", tc_pin.display()))?;
        Ok(())
    };
    if let Err(e) = attach_tc(inst) {
        // Leave nothing half-attached.
        let _ = state::detach_link(&xdp_pin);
        return Err(e);
    }
    Ok(Undo::Attached { iface: i.clone() })
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

/// `moat fw detach [-i IFACE]`: goes by the pins (the kernel's state), not
/// by the state file, and returns only once the hooks no longer run moat's
/// programs (BPF_LINK_DETACH, then checked).
pub fn detach(interfaces: &[String]) -> Result<()> {
    sys::require_privileges("moat fw detach")?;
    let paths = Paths::from_env();
    if !paths.exists() {
        if let Some(why) = state::remove_state(&paths) {
            eprintln!("warning: could not remove the stale state file: {why}");
        }
        println!("the firewall is not attached");
        return Ok(());
    }
    let _lock = FwLock::acquire(&paths, "moat fw detach", LOCK_WAIT)?;
    let file = read_state_file(&paths);
    let kernel = Kernel::read(&paths, |i| mode_from_file(&file, i));
    let (gone, keep): (Vec<&KernelIface>, Vec<&KernelIface>) = kernel
        .interfaces
        .iter()
        .partition(|k| interfaces.is_empty() || interfaces.contains(&k.iface.name));
    if gone.is_empty() && !interfaces.is_empty() {
        bail!("the firewall is not attached to {}", interfaces.join(", "));
    }
    for k in &gone {
        for l in k.xdp.iter().chain(k.tc.iter()) {
            state::detach_link(&l.path)?;
        }
    }
    let names = gone
        .iter()
        .map(|k| k.iface.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if keep.is_empty() {
        drop(_lock);
        std::fs::remove_dir_all(&paths.pins)
            .with_context(|| format!("removing {}", paths.pins.display()))?;
        if let Some(parent) = paths.pins.parent() {
            let _ = std::fs::remove_dir(parent); // only if empty
        }
        let warn = state::remove_state(&paths);
        if gone.is_empty() {
            println!("removed stray firewall pins");
        } else {
            println!("detached from {names}; firewall removed (programs, links, maps and pins)");
        }
        if let Some(why) = warn {
            eprintln!(
                "warning: could not remove the state file ({why}); it is stale and ignored (status goes by the kernel)"
            );
        }
    } else {
        if let StateFile::Ok(mut st) = file {
            st.interfaces
                .retain(|i| keep.iter().any(|k| k.iface.same_place(i)));
            match StagedState::write(&paths, &st).and_then(StagedState::commit) {
                Ok(()) => {}
                Err(e) => eprintln!(
                    "warning: could not update the state file ({e:#}); status goes by the kernel"
                ),
            }
        }
        println!("detached from {names}");
    }
    Ok(())
}

pub(crate) fn pinned_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `moat fw status [--json]`: what the kernel runs (links, programs, their
/// generation, counters), with names from the state file when it describes
/// the same generation.
pub fn status(json_out: bool) -> Result<()> {
    sys::require_privileges("moat fw status")?;
    let paths = Paths::from_env();
    let file = read_state_file(&paths);
    let kernel = Kernel::read(&paths, |i| mode_from_file(&file, i));
    if kernel.is_empty() {
        if json_out {
            println!(
                "{}",
                json!({ "attached": false, "state_file": file.describe() })
            );
        } else {
            println!("the firewall is not attached (moat fw apply -f POLICY -i IFACE)");
            if !matches!(file, StateFile::Missing) {
                println!(
                    "  (a stale state file is left: {}; ignored)",
                    file.describe()
                );
            }
        }
        return Ok(());
    }
    let gens = kernel.generations();
    let generation = gens.last().copied();
    // The state file names rules only if it describes what runs.
    let described = file
        .state()
        .filter(|s| Some(s.generation) == generation && gens.len() == 1)
        .cloned();
    let file_note = match (&file, &described) {
        (StateFile::Ok(_), Some(_)) => "ok".to_string(),
        (StateFile::Ok(s), None) => format!(
            "stale (describes generation {}, the kernel runs {})",
            s.generation,
            gens.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (f, _) => f.describe(),
    };
    let counters = super::observe::counters(&paths)?;
    let stats = &counters.reasons;
    let (ct_entries, ct_max) = counters
        .maps
        .iter()
        .find(|m| m.0 == abi::MAP_CT)
        .map_or((0, 0), |m| (m.1 as usize, m.2));
    let links: Vec<(Iface, bool, Option<u32>)> = kernel
        .interfaces
        .iter()
        .map(|k| {
            let ok =
                k.xdp.as_ref().is_some_and(|l| l.live()) && k.tc.as_ref().is_some_and(|l| l.live());
            let g = k.xdp.as_ref().and_then(|l| l.generation);
            (k.iface.clone(), ok, g)
        })
        .collect();
    let rule_hits: Vec<serde_json::Value> = counters
        .rules
        .iter()
        .enumerate()
        .map(|(i, (name, dir, action, v))| {
            let line = described
                .as_ref()
                .and_then(|s| i.checked_sub(1).and_then(|j| s.rules.get(j)))
                .map_or(0, |r| r.line);
            json!({ "id": i, "rule": name, "direction": dir, "action": action, "line": line, "packets": v.packets, "bytes": v.bytes })
        })
        .collect();
    let reasons: serde_json::Map<String, serde_json::Value> = abi::STAT_NAMES
        .iter()
        .zip(stats)
        .map(|(n, v)| {
            (
                (*n).to_string(),
                json!({ "packets": v.packets, "bytes": v.bytes }),
            )
        })
        .collect();
    let policy = described.as_ref().map(|s| s.policy.clone());
    let maps_json: serde_json::Map<String, serde_json::Value> = counters
        .maps
        .iter()
        .map(|(n, e, m)| ((*n).to_string(), json!({ "entries": e, "max": m })))
        .collect();
    if json_out {
        println!(
            "{}",
            json!({
                "attached": links.iter().any(|l| l.1),
                "generation": generation,
                "generations": gens,
                "state_file": file_note,
                "policy": policy,
                "applied_unix": described.as_ref().map(|s| s.applied_unix),
                "default": described.as_ref().map(|s| json!({ "ingress": s.default_ingress, "egress": s.default_egress })),
                "interfaces": links.iter().map(|(i, ok, g)| json!({ "name": i.name, "netns": i.netns, "mode": i.mode, "linked": ok, "generation": g })).collect::<Vec<_>>(),
                "rules": rule_hits,
                "reasons": reasons,
                "conntrack": { "entries": ct_entries, "max": ct_max },
                "maps": maps_json,
            })
        );
        return Ok(());
    }
    match &described {
        Some(s) => println!(
            "firewall: generation {}, policy {}, default ingress {} / egress {}",
            s.generation,
            s.policy.display(),
            s.default_ingress,
            s.default_egress
        ),
        None => println!(
            "firewall: generation {} (state file {file_note}: policy and rule names unknown)",
            gens.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    for (i, ok, g) in &links {
        println!(
            "  {}{}: XDP ({}) ingress + TCX egress{}{}",
            i.name,
            i.netns
                .as_ref()
                .map(|n| format!(" [netns {n}]"))
                .unwrap_or_default(),
            i.mode,
            if gens.len() > 1 {
                format!(", generation {}", g.map_or("?".into(), |g| g.to_string()))
            } else {
                String::new()
            },
            if *ok {
                ""
            } else {
                "  NOT ATTACHED (defunct or missing link)"
            }
        );
    }
    println!(
        "\n  {:<4} {:<20} {:<8} {:<6} {:>12} {:>12}",
        "id", "rule", "dir", "action", "packets", "bytes"
    );
    for r in &rule_hits {
        println!(
            "  {:<4} {:<20} {:<8} {:<6} {:>12} {:>12}",
            r["id"].as_u64().unwrap_or(0),
            r["rule"].as_str().unwrap_or(""),
            r["direction"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            r["packets"].as_u64().unwrap_or(0),
            human(r["bytes"].as_u64().unwrap_or(0) as f64, "B")
        );
    }
    println!("\n  {:<18} {:>12} {:>12}", "reason", "packets", "bytes");
    for (n, v) in abi::STAT_NAMES.iter().zip(stats) {
        println!(
            "  {:<18} {:>12} {:>12}",
            n,
            v.packets,
            human(v.bytes as f64, "B")
        );
    }
    let fill =
        |n: u64, max: u64| format!("{n}/{max} ({:.1}%)", n as f64 * 100.0 / max.max(1) as f64);
    println!(
        "\n  maps: {}",
        counters
            .maps
            .iter()
            .map(|(n, e, m)| format!("{n} {}", fill(*e, *m)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// A packet described on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    /// tcp/udp destination port, or icmp type << 8 | code.
    pub port: u16,
}

fn parse_endpoint(s: &str, with_port: bool) -> Result<(IpAddr, u16)> {
    if !with_port {
        return Ok((
            s.parse()
                .map_err(|_| anyhow!("{s:?} is not an IP address"))?,
            0,
        ));
    }
    let (a, p) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("{s:?}: write IPv6 endpoints as [ADDR]:PORT"))?;
        (a, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| anyhow!("{s:?}: expected ADDR:PORT"))?
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| anyhow!("{a:?} is not an IP address"))?;
    let port: u16 = p
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("{p:?} is not a port (1-65535)"))?;
    Ok((ip, port))
}

/// Parses `tcp A:P -> B:P`, `udp ...`, `icmp A -> B [TYPE [CODE]]`, `icmpv6 ...`.
pub fn parse_flow(s: &str) -> Result<FlowSpec> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let usage = "expected e.g. \"tcp 198.51.100.7:40000 -> 10.0.0.1:22\", \"udp [2001:db8::1]:5353 -> [2001:db8::2]:53\" or \"icmp 192.0.2.1 -> 10.0.0.1 echo-request\"";
    if words.len() < 4 || words[2] != "->" {
        bail!("cannot read packet {s:?}: {usage}");
    }
    let proto = match words[0] {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        p => p
            .parse::<u8>()
            .map_err(|_| anyhow!("unknown protocol {p:?}: {usage}"))?,
    };
    let ports = proto == 6 || proto == 17;
    let (src, sport) = parse_endpoint(words[1], ports)?;
    let (dst, dport) = parse_endpoint(words[3], ports)?;
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("{src} and {dst} are of different address families");
    }
    let port = if ports {
        if words.len() > 4 {
            bail!("unexpected {:?} after the destination: {usage}", words[4]);
        }
        dport
    } else if proto == 1 || proto == 58 {
        let ty = match words.get(4) {
            None => {
                if proto == 1 {
                    8
                } else {
                    128
                }
            }
            Some(t) => match t.parse::<u8>() {
                Ok(n) => n,
                Err(_) => policy::ICMP_NAMES
                    .iter()
                    .find(|(n, _, _)| n == t)
                    .and_then(|(_, v4, v6)| if proto == 1 { *v4 } else { *v6 })
                    .ok_or_else(|| anyhow!("unknown ICMP type {t:?} for {}", words[0]))?,
            },
        };
        let code: u8 = match words.get(5) {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| anyhow!("{c:?} is not an ICMP code (0-255)"))?,
        };
        (u16::from(ty) << 8) | u16::from(code)
    } else {
        0
    };
    Ok(FlowSpec {
        proto,
        src,
        sport: if ports { sport } else { 0x4d4f },
        dst,
        port,
    })
}

pub struct ExplainOpts {
    pub policy: Option<PathBuf>,
    pub packet: String,
    pub egress: bool,
    pub json: bool,
}

/// `moat fw explain`: the verdict and deciding rule, from the real BPF
/// program (BPF_PROG_TEST_RUN on a private instance) and from the reference.
pub fn explain(o: &ExplainOpts, log: &LogOpts) -> Result<()> {
    let spec = parse_flow(&o.packet)?;
    let paths = Paths::from_env();
    let policy_path = match &o.policy {
        Some(p) => p.clone(),
        None => read_state_file(&paths)
            .state()
            .map(|s| s.policy.clone())
            .ok_or_else(|| anyhow!("no policy applied: give -f POLICY"))?,
    };
    let (p, c) = load_policy(&policy_path)?;
    sys::require_privileges("moat fw explain (it runs the BPF program)")?;
    sys::ensure_bpffs()?;
    let dir = if o.egress { Dir::Egress } else { Dir::Ingress };
    let remote = if o.egress { spec.dst } else { spec.src };
    let flow = Flow {
        dir,
        remote,
        proto: spec.proto,
        port: spec.port,
    };
    let want = reference::decide(&p, &flow);

    // A private instance: its own conntrack, removed afterwards.
    let pin_root = paths
        .pins
        .parent()
        .unwrap_or(Path::new("/sys/fs/bpf"))
        .to_path_buf();
    let private = pin_root.join(format!("explain-{}", std::process::id()));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir(parent); // only if empty
            }
        }
    }
    let _cleanup = Cleanup(private.clone());
    let mut inst = FwInstance::load(&p, &c, 1, &private, log, &mut |_, _, _| {})?;
    let frame = moat_core::fw::frame_between(spec.src, spec.dst, spec.proto, spec.sport, spec.port);
    let r = inst.run(dir, &frame)?;
    let rule_name = |id: Option<usize>| match id {
        None => format!("the {} default", dir.name()),
        Some(i) => format!(
            "rule {:?} ({}:{})",
            p.rules[i].name,
            policy_path.display(),
            p.rules[i].line
        ),
    };
    let bpf_rule = r.rule.map(|id| RuleId(id).rule_index());
    let agree = r.passed == (want.action == Action::Allow) && bpf_rule == Some(want.rule);
    let reason = r.reason.map_or("?", |i| abi::STAT_NAMES[i as usize]);
    if o.json {
        println!(
            "{}",
            json!({
                "packet": o.packet,
                "direction": dir.name(),
                "remote": remote.to_string(),
                "bpf": { "program": if o.egress { abi::PROG_TC } else { abi::PROG_XDP }, "verdict": if r.passed { "allow" } else { "deny" },
                         "rule": bpf_rule.flatten().map(|i| p.rules[i].name.clone()), "reason": reason, "return_value": r.return_value },
                "reference": { "verdict": want.action.name(), "rule": want.rule.map(|i| p.rules[i].name.clone()) },
                "agree": agree,
            })
        );
    } else {
        println!("{} ({}, remote {remote})", o.packet, dir.name());
        let prog = if o.egress {
            abi::PROG_TC
        } else {
            abi::PROG_XDP
        };
        let bpf_label = format!("BPF program ({prog} via BPF_PROG_TEST_RUN):");
        let w = bpf_label.len();
        println!(
            "  {bpf_label} {:<5} by {} [{reason}]",
            if r.passed { "allow" } else { "deny" },
            bpf_rule.map_or("an unknown rule".into(), rule_name)
        );
        println!(
            "  {:<w$} {:<5} by {}",
            "reference model:",
            want.action.name(),
            rule_name(want.rule)
        );
        println!(
            "  {}",
            if agree {
                "agree"
            } else {
                "DISAGREE: this is a bug in moat, please report it"
            }
        );
    }
    if !agree {
        bail!("the BPF program and the reference model disagree");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn flow_specs() {
        let f = parse_flow("tcp 198.51.100.7:40000 -> 10.0.0.1:22").unwrap();
        assert_eq!((f.proto, f.sport, f.port), (6, 40000, 22));
        let f = parse_flow("udp [2001:db8::1]:5353 -> [2001:db8::2]:53").unwrap();
        assert_eq!((f.proto, f.port), (17, 53));
        let f = parse_flow("icmp 192.0.2.1 -> 10.0.0.1 echo-request").unwrap();
        assert_eq!(f.port, 8 << 8);
        let f = parse_flow("icmpv6 2001:db8::1 -> 2001:db8::2 destination-unreachable 4").unwrap();
        assert_eq!(f.port, (1 << 8) | 4);
        assert!(parse_flow("tcp 1.2.3.4 -> 5.6.7.8:22").is_err());
        assert!(parse_flow("tcp 1.2.3.4:1 -> ::1:22").is_err());
        assert!(parse_flow("gre 1.2.3.4 -> 5.6.7.8").is_err());
        assert_eq!(parse_flow("47 1.2.3.4 -> 5.6.7.8").unwrap().proto, 47);
    }
}
