//! `moat fw check | apply | status | explain | detach`.
//!
//! State: the links (one XDP, one TCX egress per interface), the shared maps
//! (conntrack, fragments, reason counters) and the current per-rule counters
//! are pinned under `MOAT_PIN_ROOT/fw` (default /sys/fs/bpf/moat/fw); what the
//! pins mean (generation, policy file, rule names, interfaces) is written to
//! `MOAT_STATE_ROOT/fw/state.json` (default /run/moat). The firewall keeps
//! running after the command exits: the pinned links hold the programs.

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
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::instance::{FwInstance, sum_percpu};
use crate::{count::Mode, loader::LogOpts, sys};

/// Where the firewall's pins and state live.
#[derive(Clone, Debug)]
pub struct Paths {
    pub pins: PathBuf,
    pub state_dir: PathBuf,
}

impl Paths {
    /// Pins under `pin_root`/fw, state under `state_root`/fw.
    pub fn under(pin_root: &Path, state_root: &Path) -> Paths {
        Paths {
            pins: pin_root.join("fw"),
            state_dir: state_root.join("fw"),
        }
    }

    /// Defaults, or `MOAT_PIN_ROOT` / `MOAT_STATE_ROOT` (used by the tests to
    /// keep parallel firewalls apart).
    pub fn from_env() -> Paths {
        let pin_root = std::env::var("MOAT_PIN_ROOT").unwrap_or_else(|_| "/sys/fs/bpf/moat".into());
        let state_root = std::env::var("MOAT_STATE_ROOT").unwrap_or_else(|_| "/run/moat".into());
        Paths {
            pins: Path::new(&pin_root).join("fw"),
            state_dir: Path::new(&state_root).join("fw"),
        }
    }
    fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
    fn links(&self) -> PathBuf {
        self.pins.join("links")
    }
    fn link_pin(&self, iface: &Iface, kind: &str) -> PathBuf {
        // bpffs refuses names with a dot.
        self.links().join(format!(
            "{}@{}@{kind}",
            iface.netns.as_deref().unwrap_or("host"),
            iface.name
        ))
    }
    pub(crate) fn rule_stats(&self) -> PathBuf {
        self.pins.join("rule_stats")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub netns: Option<String>,
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub direction: String,
    pub action: String,
    pub line: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub generation: u32,
    pub policy: PathBuf,
    pub applied_unix: u64,
    pub default_ingress: String,
    pub default_egress: String,
    pub rules: Vec<RuleInfo>,
    pub interfaces: Vec<Iface>,
    pub addr4_entries: usize,
    pub addr6_entries: usize,
    pub verdict_entries: usize,
    pub classes: usize,
    pub memory_bytes: usize,
}

pub(crate) fn read_state(p: &Paths) -> Result<Option<State>> {
    match std::fs::read_to_string(p.state_file()) {
        Ok(s) => {
            Ok(Some(serde_json::from_str(&s).with_context(|| {
                format!("parsing {}", p.state_file().display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.state_file().display())),
    }
}

fn write_state(p: &Paths, s: &State) -> Result<()> {
    std::fs::create_dir_all(&p.state_dir)?;
    let tmp = p.state_dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(s)?)?;
    std::fs::rename(&tmp, p.state_file())?;
    Ok(())
}

/// Loads and compiles a policy; errors come back as `FILE:LINE:COL: reason`
/// lines (all of them).
pub fn load_policy(path: &Path) -> Result<(Policy, compile::Compiled)> {
    let p = policy::load(path).map_err(|e| {
        anyhow!(
            "{e}\n{} error(s) in the policy; nothing was changed",
            e.0.len()
        )
    })?;
    let c = compile::compile(&p);
    check_memory(&p, &c)?;
    Ok((p, c))
}

fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn check_memory(p: &Policy, c: &compile::Compiled) -> Result<()> {
    match mem_available() {
        Some(avail) => check_memory_against(p, c, avail),
        None => Ok(()),
    }
}

/// Refuses a policy whose maps would need more than half of `avail` bytes,
/// pointing at the rule with the most prefixes.
fn check_memory_against(p: &Policy, c: &compile::Compiled, avail: usize) -> Result<()> {
    let need = c.memory_bytes();
    if need > avail / 2 {
        let biggest = p
            .rules
            .iter()
            .max_by_key(|r| r.remote.as_ref().map_or(0, Vec::len));
        let line = biggest.map_or(0, |r| r.line);
        bail!(
            "{}:{line}:1: the policy needs about {} of kernel memory ({} map entries), more than half of the {} available; nothing was changed",
            p.source.display(),
            human(need as f64, "B"),
            c.addr4.len() + c.addr6.len() + c.verdicts.len(),
            human(avail as f64, "B")
        );
    }
    Ok(())
}

/// `moat fw check`: validate and compile, no privileges needed.
pub fn check(path: &Path, json_out: bool) -> Result<()> {
    let t = Instant::now();
    let (p, c) = load_policy(path)?;
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
                "memory_bytes": c.memory_bytes(),
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
    println!("map entries:");
    println!("  {:<12} {:>9}", abi::MAP_ADDR4, c.addr4.len());
    println!("  {:<12} {:>9}", abi::MAP_ADDR6, c.addr6.len());
    println!("  {:<12} {:>9}", abi::MAP_VERDICT, c.verdicts.len());
    println!(
        "kernel memory for the policy maps: about {}",
        human(c.memory_bytes() as f64, "B")
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
}

/// `moat fw apply`.
pub fn apply(o: &ApplyOpts, log: &LogOpts) -> Result<()> {
    apply_at(&Paths::from_env(), o, log)
}

/// `moat fw apply` with pins and state under `paths` (benchmarks, tests).
pub fn apply_at(paths: &Paths, o: &ApplyOpts, log: &LogOpts) -> Result<()> {
    let t0 = Instant::now();
    let paths = paths.clone();
    let (p, c) = load_policy(&o.policy)?;
    sys::require_privileges("moat fw apply")?;
    sys::ensure_bpffs()?;
    let old = read_state(&paths)?;
    let names: Vec<String> = if !o.interfaces.is_empty() {
        o.interfaces.clone()
    } else if !p.interfaces.is_empty() {
        p.interfaces.clone()
    } else if let Some(s) = &old {
        s.interfaces.iter().map(|i| i.name.clone()).collect()
    } else {
        bail!(
            "no interface to protect: give -i IFACE or `interfaces:` in {}",
            o.policy.display()
        );
    };
    let mode = match o.mode {
        Mode::Native => "native",
        Mode::Skb => "skb",
    };
    let ifaces: Vec<Iface> = names
        .iter()
        .map(|n| Iface {
            name: n.clone(),
            netns: o.netns.clone(),
            mode: mode.into(),
        })
        .collect();
    // Check every interface exists before touching anything.
    for i in &ifaces {
        sys::in_netns(i.netns.as_deref(), || {
            crate::traffic::ifindex(&i.name).map(|_| ())
        })
        .with_context(|| {
            format!(
                "interface {}{}",
                i.name,
                i.netns
                    .as_ref()
                    .map(|n| format!(" (netns {n})"))
                    .unwrap_or_default()
            )
        })?;
    }
    let generation = old
        .as_ref()
        .map_or(1, |s| s.generation.wrapping_add(1).max(1));
    let mut progress = progress_printer(o.quiet);
    // Conntrack kept from a firewall without the presence filter (an older
    // moat): the new filter must learn its entries, before and after the
    // swap (the old program may add entries in between).
    let seed_filter =
        paths.pins.join(abi::MAP_CT).exists() && !paths.pins.join(abi::MAP_CTSEEN).exists();
    let mut inst = FwInstance::load(&p, &c, generation, &paths.pins, log, &mut progress)?;
    if seed_filter {
        inst.seed_ctseen()?;
    }
    carry_rule_counters(&paths, old.as_ref(), &p, &mut inst)?;
    let t_fill = t0.elapsed();

    std::fs::create_dir_all(paths.links())?;
    let mut swapped = Vec::new();
    for i in &ifaces {
        let r = sys::in_netns(i.netns.as_deref(), || {
            attach_or_swap(&mut inst, &paths, i, o.mode)
        });
        match r {
            Ok(what) => swapped.push(format!("{} ({what})", i.name)),
            Err(e) => {
                return Err(e.context(format!(
                    "attaching to {}; interfaces done so far run the new policy: {}",
                    i.name,
                    if swapped.is_empty() {
                        "none".into()
                    } else {
                        swapped.join(", ")
                    }
                )));
            }
        }
    }
    if seed_filter {
        inst.seed_ctseen()?;
    }
    // Per-rule counters of the instance now in force, for `fw status`.
    let tmp = paths.pins.join("rule_stats_new");
    let _ = std::fs::remove_file(&tmp);
    inst.bpf
        .map(abi::MAP_RULE_STATS)
        .ok_or_else(|| anyhow!("no rule stats map"))?
        .pin(&tmp)
        .map_err(|e| anyhow!("pinning rule counters: {e}"))?;
    std::fs::rename(&tmp, paths.rule_stats())?;

    // Interfaces the old state had and the new one does not: detach.
    if let Some(s) = &old {
        for i in s.interfaces.iter().filter(|i| {
            !ifaces
                .iter()
                .any(|n| n.name == i.name && n.netns == i.netns)
        }) {
            remove_links(&paths, i);
            swapped.push(format!("{} (detached)", i.name));
        }
    }
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
        memory_bytes: c.memory_bytes(),
    };
    write_state(&paths, &state)?;
    println!(
        "applied {} (generation {generation}): {} rules, {} address classes, {} map entries (~{}), default ingress {} / egress {}",
        o.policy.display(),
        p.rules.len(),
        c.classes.len(),
        c.addr4.len() + c.addr6.len() + c.verdicts.len(),
        human(c.memory_bytes() as f64, "B"),
        p.default_ingress.name(),
        p.default_egress.name()
    );
    println!("interfaces: {}", swapped.join(", "));
    println!(
        "took {:.2?} (compile + load + fill {:.2?}, swap {:.2?}); programs: {}",
        t0.elapsed(),
        t_fill,
        t0.elapsed() - t_fill,
        inst.loaded
            .iter()
            .map(|l| format!("{} id {}", l.name, l.id))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Seeds the new instance's per-rule counters with the running ones, by rule
/// name (and the defaults' with the defaults'), so hits survive an apply.
/// Packets counted by the old programs during the swap itself are not carried.
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
            && let Some(v) = prev.get(j + 1)
        {
            seed(i as u32 + 1, *v)?;
        }
    }
    Ok(())
}

/// Attaches the instance's programs to `i`, or swaps them into existing
/// pinned links (BPF_LINK_UPDATE: atomic per hook). Runs in i's netns.
fn attach_or_swap(
    inst: &mut FwInstance,
    paths: &Paths,
    i: &Iface,
    mode: Mode,
) -> Result<&'static str> {
    let xdp_pin = paths.link_pin(i, "xdp");
    let tc_pin = paths.link_pin(i, "tc");
    let swapped = xdp_pin.exists() && tc_pin.exists();
    if swapped {
        let link: FdLink = PinnedLink::from_pin(&xdp_pin)
            .map_err(|e| anyhow!("opening {}: {e}", xdp_pin.display()))?
            .into();
        let link = XdpLink::try_from(link).map_err(|e| anyhow!("{}: {e}", xdp_pin.display()))?;
        inst.xdp()?
            .attach_to_link(link)
            .map_err(|e| anyhow!("updating the XDP link of {}: {e}", i.name))?;
        let link: FdLink = PinnedLink::from_pin(&tc_pin)
            .map_err(|e| anyhow!("opening {}: {e}", tc_pin.display()))?
            .into();
        let link = SchedClassifierLink::try_from(link)
            .map_err(|e| anyhow!("{}: {e}", tc_pin.display()))?;
        inst.tc()?
            .attach_to_link(link)
            .map_err(|e| anyhow!("updating the TC link of {}: {e}", i.name))?;
        return Ok("policy swapped");
    }
    // Fresh attach: XDP (ingress), then TCX egress; pin both links.
    let _ = std::fs::remove_file(&xdp_pin);
    let _ = std::fs::remove_file(&tc_pin);
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
        // Leave nothing half-attached: dropping the XDP pin detaches it.
        let _ = std::fs::remove_file(&xdp_pin);
        return Err(e);
    }
    Ok("attached")
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

fn remove_links(paths: &Paths, i: &Iface) {
    let _ = std::fs::remove_file(paths.link_pin(i, "xdp"));
    let _ = std::fs::remove_file(paths.link_pin(i, "tc"));
}

/// `moat fw detach [-i IFACE]`.
pub fn detach(interfaces: &[String]) -> Result<()> {
    sys::require_privileges("moat fw detach")?;
    let paths = Paths::from_env();
    let Some(mut state) = read_state(&paths)? else {
        // Nothing recorded: still clean stray pins.
        let had = paths.pins.exists();
        let _ = std::fs::remove_dir_all(&paths.pins);
        println!(
            "{}",
            if had {
                "removed stray firewall pins"
            } else {
                "the firewall is not attached"
            }
        );
        return Ok(());
    };
    let (gone, keep): (Vec<Iface>, Vec<Iface>) = state
        .interfaces
        .iter()
        .cloned()
        .partition(|i| interfaces.is_empty() || interfaces.contains(&i.name));
    if gone.is_empty() {
        bail!("the firewall is not attached to {}", interfaces.join(", "));
    }
    for i in &gone {
        remove_links(&paths, i);
    }
    if keep.is_empty() {
        std::fs::remove_dir_all(&paths.pins)
            .with_context(|| format!("removing {}", paths.pins.display()))?;
        std::fs::remove_dir_all(&paths.state_dir)
            .with_context(|| format!("removing {}", paths.state_dir.display()))?;
        for dir in [paths.pins.parent(), paths.state_dir.parent()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir(dir); // only if empty
        }
        println!(
            "detached from {}; firewall removed (programs, links, maps and pins)",
            gone.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        state.interfaces = keep;
        write_state(&paths, &state)?;
        println!(
            "detached from {}",
            gone.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub(crate) fn pinned_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `moat fw status [--json]`.
pub fn status(json_out: bool) -> Result<()> {
    sys::require_privileges("moat fw status")?;
    let paths = Paths::from_env();
    let Some(state) = read_state(&paths)? else {
        if json_out {
            println!("{}", json!({ "attached": false }));
        } else {
            println!("the firewall is not attached (moat fw apply -f POLICY -i IFACE)");
        }
        return Ok(());
    };
    let counters = super::observe::counters(&paths)?;
    let stats = &counters.reasons;
    let (ct_entries, ct_max) = counters
        .maps
        .iter()
        .find(|m| m.0 == abi::MAP_CT)
        .map_or((0, 0), |m| (m.1 as usize, m.2));
    let links_ok: Vec<(Iface, bool)> = state
        .interfaces
        .iter()
        .map(|i| {
            (
                i.clone(),
                paths.link_pin(i, "xdp").exists() && paths.link_pin(i, "tc").exists(),
            )
        })
        .collect();
    let rule_hits: Vec<serde_json::Value> = std::iter::once(("(default)".to_string(), "".to_string(), "".to_string(), 0usize))
        .chain(state.rules.iter().map(|r| (r.name.clone(), r.direction.clone(), r.action.clone(), r.line)))
        .enumerate()
        .map(|(i, (name, dir, action, line))| {
            let v = counters.rules.get(i).map(|r| r.3).unwrap_or_default();
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
    if json_out {
        println!(
            "{}",
            json!({
                "attached": true,
                "generation": state.generation,
                "policy": state.policy,
                "applied_unix": state.applied_unix,
                "default": { "ingress": state.default_ingress, "egress": state.default_egress },
                "interfaces": links_ok.iter().map(|(i, ok)| json!({ "name": i.name, "netns": i.netns, "mode": i.mode, "linked": ok })).collect::<Vec<_>>(),
                "rules": rule_hits,
                "reasons": reasons,
                "conntrack": { "entries": ct_entries, "max": ct_max },
                "maps": {
                    abi::MAP_ADDR4: { "entries": state.addr4_entries, "max": state.addr4_entries.max(1) },
                    abi::MAP_ADDR6: { "entries": state.addr6_entries, "max": state.addr6_entries.max(1) },
                    abi::MAP_VERDICT: { "entries": state.verdict_entries, "max": state.verdict_entries.max(1) },
                    abi::MAP_CT: { "entries": ct_entries, "max": ct_max },
                },
            })
        );
        return Ok(());
    }
    println!(
        "firewall: generation {}, policy {}, default ingress {} / egress {}",
        state.generation,
        state.policy.display(),
        state.default_ingress,
        state.default_egress
    );
    for (i, ok) in &links_ok {
        println!(
            "  {}{}: XDP ({}) ingress + TCX egress{}",
            i.name,
            i.netns
                .as_ref()
                .map(|n| format!(" [netns {n}]"))
                .unwrap_or_default(),
            i.mode,
            if *ok { "" } else { "  MISSING LINK PINS" }
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
        |n: usize, max: usize| format!("{n}/{max} ({:.1}%)", n as f64 * 100.0 / max.max(1) as f64);
    println!(
        "\n  maps: {} {}, {} {}, {} {}, {} {}",
        abi::MAP_CT,
        fill(ct_entries, ct_max as usize),
        abi::MAP_ADDR4,
        fill(state.addr4_entries, state.addr4_entries.max(1)),
        abi::MAP_ADDR6,
        fill(state.addr6_entries, state.addr6_entries.max(1)),
        abi::MAP_VERDICT,
        fill(state.verdict_entries, state.verdict_entries.max(1))
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
        None => read_state(&paths)?
            .map(|s| s.policy)
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
    let bpf_rule = r
        .rule
        .map(|id| if id == 0 { None } else { Some(id as usize - 1) });
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
    fn policies_too_big_for_memory_are_refused_with_a_location() {
        let text = "rules:\n  - name: small\n    direction: ingress\n    action: allow\n  - name: big\n    direction: ingress\n    action: deny\n    remote: [10.0.0.0/8, 10.1.0.0/16, 192.0.2.0/24]\n";
        let p = policy::parse(text, Path::new("mem.yaml")).unwrap();
        let c = compile::compile(&p);
        assert!(check_memory_against(&p, &c, c.memory_bytes() * 2).is_ok());
        let e = check_memory_against(&p, &c, c.memory_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mem.yaml:5:1: the policy needs about"), "{e}");
        assert!(e.contains("nothing was changed"), "{e}");
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
