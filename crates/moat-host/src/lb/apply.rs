//! `moat lb apply`, `moat lb backend`, `moat lb plan`, `moat lb detach` as
//! operations. Every change loads a fresh instance (VIPs and Maglev tables
//! of the new config) over the shared pinned maps and swaps it into each
//! interface's pinned XDP link at once (BPF_LINK_UPDATE): no packet sees
//! half a table. A failure anywhere puts back what was changed.

use std::{
    net::{IpAddr, UdpSocket},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use moat_abi::lb as abi;
use moat_core::lb::{
    self as core, BackendId, LbConfig, State,
    encode::{self, Encoded, Running},
    plan::{self, SvcPlan},
};

use super::{
    instance::LbInstance,
    status::{self, LIVE_CONFIG},
};
use crate::{
    bpfsys,
    fw::state::{self, FwLock, Iface, Paths},
    loader::LogOpts,
    sys,
};

pub const LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct ApplyOpts {
    pub config: PathBuf,
    /// Overrides the file's `interfaces:`.
    pub interfaces: Vec<String>,
    pub netns: Option<String>,
    /// skb (generic) XDP instead of native.
    pub skb: bool,
}

#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub generation: u32,
    pub services: usize,
    pub backends: usize,
    pub interfaces: Vec<String>,
    pub notes: Vec<String>,
    pub program_id: u32,
    pub total: Duration,
}

/// Reads and checks a config file (errors as FILE:LINE:COL lines).
pub fn load_config(path: &Path) -> Result<LbConfig> {
    core::load(path).map_err(|e| anyhow!("{e}"))
}

pub fn apply_at(paths: &Paths, o: &ApplyOpts, log: &LogOpts) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let cfg = load_config(&o.config)?;
    sys::require_privileges("moat lb apply")?;
    sys::ensure_bpffs()?;
    let _lock = FwLock::acquire(paths, "moat lb apply", LOCK_WAIT)?;
    let names = if o.interfaces.is_empty() {
        cfg.interfaces.clone()
    } else {
        o.interfaces.clone()
    };
    let running_links = status::links(paths);
    let ifaces: Vec<Iface> = if !names.is_empty() {
        names
            .iter()
            .map(|n| Iface {
                name: n.clone(),
                netns: o.netns.clone(),
                mode: if o.skb { "skb" } else { "native" }.into(),
            })
            .collect()
    } else if !running_links.is_empty() {
        running_links
            .iter()
            .map(|(_, ns, i)| Iface {
                name: i.clone(),
                netns: ns.clone(),
                mode: "native".into(),
            })
            .collect()
    } else {
        bail!(
            "no interface to balance on: give -i IFACE or `interfaces:` in {}",
            o.config.display()
        );
    };
    for i in &ifaces {
        sys::in_netns(i.netns.as_deref(), || {
            crate::traffic::ifindex(&i.name).map(|_| ())
        })
        .with_context(|| format!("interface {}; nothing was changed", i.label()))?;
    }
    let r = status::running(paths);
    let services = cfg.services.clone();
    let none = |_: &str, _: BackendId| None;
    let (gen_, enc) = encode_next(paths, &cfg, &services, &r, &none)?;
    let mut report = swap_in(paths, &cfg, &enc, &ifaces, o.skb, log)?;
    // Interfaces that ran the balancer and are not in the new set: detach.
    for (pin, ns, name) in running_links {
        if !ifaces
            .iter()
            .any(|i| i.name == name && i.netns.as_deref() == ns.as_deref())
        {
            leave(paths, &pin, ns.as_deref(), &name)?;
            report.interfaces.push(format!("{name} (detached)"));
        }
    }
    warm_neighbours(&cfg, &ifaces);
    report.generation = gen_;
    report.total = t0.elapsed();
    Ok(report)
}

fn encode_next(
    paths: &Paths,
    cfg: &LbConfig,
    services: &[core::Service],
    r: &Running,
    state_of: &dyn Fn(&str, BackendId) -> Option<State>,
) -> Result<(u32, Encoded)> {
    let generation = status::live_config(paths)
        .map_or(0, |c| c.generation)
        .wrapping_add(1)
        .max(1);
    let enc = encode::encode(cfg, services, r, generation, state_of)
        .map_err(|e| anyhow!("{e}; nothing was changed"))?;
    Ok((generation, enc))
}

/// Loads the instance for `enc`, writes the shared maps and swaps it in on
/// every interface (attaching where nothing ran); undoes it all on failure.
fn swap_in(
    paths: &Paths,
    cfg: &LbConfig,
    enc: &Encoded,
    ifaces: &[Iface],
    skb: bool,
    log: &LogOpts,
) -> Result<ApplyReport> {
    let mut notes = Vec::new();
    if let Some(have) = super::instance::pinned_max(&paths.pins.join(abi::MAP_CT))
        && have != cfg.ct_max
    {
        notes.push(format!(
            "the connection table keeps its {have} entries (conntrack max {} takes effect after `moat lb detach`, which forgets every connection)",
            cfg.ct_max
        ));
    }
    let mut inst = LbInstance::load(enc, cfg.ct_max, &paths.pins, log)?;
    // Where it runs: every interface's ifindex (in its namespace) in lb_ifaces.
    let mut idx: Vec<(&Iface, u32)> = Vec::new();
    for i in ifaces {
        let n = sys::in_netns(i.netns.as_deref(), || crate::traffic::ifindex(&i.name))?;
        if let Some((j, m)) = idx
            .iter()
            .find(|(_, m)| *m != n && *m % abi::IF_SLOTS == n % abi::IF_SLOTS)
        {
            bail!(
                "interfaces {} (ifindex {m}) and {} (ifindex {n}) share a slot of {}; nothing was changed",
                j.label(),
                i.label(),
                abi::MAP_IFACES
            );
        }
        idx.push((i, n));
    }
    let before = inst.write_shared(enc)?;
    for (_, n) in &idx {
        inst.allow_iface(*n)?;
    }
    sys::private_dir(&paths.links())?;
    let mut done: Vec<(Iface, Undo)> = Vec::new();
    let mut said = Vec::new();
    let fw = crate::chain::sibling(paths, "fw");
    for i in ifaces {
        let step = if crate::chain::link_live(&fw.link_pin(i, "xdp")).is_some() {
            chain_behind_fw(&mut inst, paths, &fw, i)
        } else {
            sys::in_netns(i.netns.as_deref(), || {
                attach_or_swap(&mut inst, paths, i, skb)
            })
            .map(|old| match old {
                Some(p) => Undo::Swapped(p),
                None => Undo::Attached,
            })
        };
        match step {
            Ok(u) => {
                said.push(format!(
                    "{} ({})",
                    i.name,
                    match u {
                        Undo::Swapped(_) => "swapped",
                        Undo::Attached => "attached",
                        Undo::Chained(_) => "after the firewall",
                    }
                ));
                done.push((i.clone(), u));
            }
            Err(e) => {
                let rb = rollback(paths, done);
                let restored = inst.restore_shared(&before);
                return Err(e.context(format!(
                    "attaching to {}; {rb}{}: nothing was changed",
                    i.label(),
                    match restored {
                        Ok(()) => String::new(),
                        Err(e) => format!(" (restoring backends failed: {e:#})"),
                    }
                )));
            }
        }
    }
    // The instance in force: its config map is what status and the next
    // change read (generation, table size).
    let finish = (|| -> Result<()> {
        let tmp = paths.pins.join("lb_config_new");
        let _ = std::fs::remove_file(&tmp);
        inst.bpf
            .map(abi::MAP_CONFIG)
            .ok_or_else(|| anyhow!("no config map"))?
            .pin(&tmp)
            .map_err(|e| anyhow!("pinning the config: {e}"))?;
        std::fs::rename(&tmp, paths.pins.join(LIVE_CONFIG))?;
        Ok(())
    })();
    if let Err(e) = finish {
        let rb = rollback(paths, done);
        let _ = inst.restore_shared(&before);
        return Err(e.context(format!("{rb}: nothing was changed")));
    }
    inst.drop_shared(enc)?;
    Ok(ApplyReport {
        generation: enc.config.generation,
        services: enc.services.len(),
        backends: enc.backends.len(),
        interfaces: said,
        notes,
        program_id: inst.loaded.id,
        total: Duration::ZERO,
    })
}

/// How to undo one interface's part of a change.
enum Undo {
    /// Its own link ran this program before.
    Swapped(OwnedFd),
    /// Nothing ran there before: detach.
    Attached,
    /// Chained behind the firewall; the program chained before, if any.
    Chained(Option<OwnedFd>),
}

/// Puts the new instance behind the firewall on `i` (the firewall's
/// program array slot and the chain marker).
fn chain_behind_fw(inst: &mut LbInstance, paths: &Paths, fw: &Paths, i: &Iface) -> Result<Undo> {
    let before = crate::chain::next_prog(fw).and_then(|id| bpfsys::prog_fd_by_id(id).ok());
    let prog = inst.xdp()?.fd()?.as_fd().try_clone_to_owned()?;
    crate::chain::set_next(fw, prog.as_fd())?;
    crate::chain::pin_marker(paths, i, prog.as_fd())?;
    Ok(Undo::Chained(before))
}

fn rollback(paths: &Paths, done: Vec<(Iface, Undo)>) -> String {
    if done.is_empty() {
        return "no interface had been switched yet".into();
    }
    let mut said = Vec::new();
    let fw = crate::chain::sibling(paths, "fw");
    for (i, old) in done.into_iter().rev() {
        let pin = paths.link_pin(&i, "xdp");
        let r = match old {
            Undo::Swapped(prog) => bpfsys::obj_get(&pin)
                .and_then(|l| bpfsys::link_update(l.as_fd(), prog.as_fd(), None)),
            Undo::Attached => state::detach_link(&pin),
            Undo::Chained(Some(prog)) => crate::chain::set_next(&fw, prog.as_fd())
                .and_then(|_| crate::chain::pin_marker(paths, &i, prog.as_fd())),
            Undo::Chained(None) => crate::chain::clear_next(&fw).map(|_| {
                let _ = std::fs::remove_file(crate::chain::marker(paths, &i));
            }),
        };
        said.push(match r {
            Ok(()) => format!("{}: put back", i.name),
            Err(e) => format!("{}: could not be put back ({e:#})", i.name),
        });
    }
    format!("rolled back ({})", said.join("; "))
}

/// Swaps the instance into i's pinned link (returning the program it ran),
/// or attaches it fresh (returning None). Runs in i's netns.
fn attach_or_swap(
    inst: &mut LbInstance,
    paths: &Paths,
    i: &Iface,
    skb: bool,
) -> Result<Option<OwnedFd>> {
    let pin = paths.link_pin(i, "xdp");
    let live = bpfsys::obj_get(&pin)
        .ok()
        .and_then(|fd| bpfsys::link_info(fd.as_fd()).ok())
        .filter(|l| l.ifindex != 0 && l.prog_id != 0);
    if let Some(l) = live {
        let old = bpfsys::prog_fd_by_id(l.prog_id)?;
        let link: FdLink = PinnedLink::from_pin(&pin)
            .map_err(|e| anyhow!("opening {}: {e}", pin.display()))?
            .into();
        let link = XdpLink::try_from(link).map_err(|e| anyhow!("{}: {e}", pin.display()))?;
        inst.xdp()?
            .attach_to_link(link)
            .map_err(|e| anyhow!("updating the XDP link of {}: {e}", i.name))?;
        return Ok(Some(old));
    }
    state::detach_link(&pin)?;
    let mode = if skb {
        aya::programs::XdpMode::Skb
    } else {
        aya::programs::XdpMode::Driver
    };
    let xdp = inst.xdp()?;
    let id = match xdp.attach(&i.name, mode) {
        Ok(id) => id,
        Err(e) => {
            let errno = match &e {
                aya::programs::ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
                _ => None,
            };
            bail!(match errno {
                Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
                    "{} already has an XDP program that is not moat's (moat's firewall would be chained with); moat will not replace it (see `ip -d link show dev {}`)",
                    i.name, i.name
                ),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if !skb =>
                    format!("the driver of {} lacks native XDP: try --skb", i.name),
                _ => format!("attaching {} to {}: {e}", abi::PROG_XDP, i.name),
            });
        }
    };
    let link = xdp.take_link(id)?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| anyhow!("XDP link of {} is not a bpf_link: {e}", i.name))?;
    fd.pin(&pin)
        .map_err(|e| anyhow!("pinning {}: {e}", pin.display()))?;
    Ok(None)
}

/// The balancer leaves one interface: its own link is detached, or its
/// place behind the firewall is given up; its `lb_ifaces` slot is emptied.
fn leave(paths: &Paths, pin: &str, ns: Option<&str>, name: &str) -> Result<()> {
    let path = paths.links().join(pin);
    if pin.ends_with("@chain") {
        let fw = crate::chain::sibling(paths, "fw");
        let others = crate::chain::chained(paths).len() > 1;
        if !others {
            crate::chain::clear_next(&fw)?;
        }
        let _ = std::fs::remove_file(&path);
    } else {
        state::detach_link(&path)?;
    }
    if let Ok(idx) = sys::in_netns(ns, || crate::traffic::ifindex(name))
        && let Ok(m) = state::pinned_map(&paths.pins.join(abi::MAP_IFACES))
        && let Ok(mut a) = aya::maps::Array::<_, u32>::try_from(m)
        && a.get(&(idx % abi::IF_SLOTS), 0).is_ok_and(|v| v == idx)
    {
        let _ = a.set(idx % abi::IF_SLOTS, 0, 0);
    }
    Ok(())
}

/// Makes the kernel resolve each backend's MAC (one datagram to the discard
/// port), so that the first packets of a DSR service find a neighbour.
fn warm_neighbours(cfg: &LbConfig, ifaces: &[Iface]) {
    let mut addrs: Vec<IpAddr> = cfg
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect();
    addrs.sort();
    addrs.dedup();
    let mut spaces: Vec<Option<String>> = ifaces.iter().map(|i| i.netns.clone()).collect();
    spaces.dedup();
    for ns in spaces {
        let _ = sys::in_netns(ns.as_deref(), || {
            for a in &addrs {
                let bind = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                if let Ok(s) = UdpSocket::bind(bind) {
                    let _ = s.send_to(b"", (*a, 9));
                }
            }
            Ok(())
        });
    }
}

/// `moat lb backend SERVICE ADDRESS up|down|drain`: the same swap as an
/// apply, over what runs (the kernel's services and backends), with one
/// backend's state changed.
pub fn set_backend(
    paths: &Paths,
    service: &str,
    backend: &str,
    to: State,
    log: &LogOpts,
) -> Result<(BackendId, State, ApplyReport)> {
    sys::require_privileges("moat lb backend")?;
    sys::ensure_bpffs()?;
    let _lock = FwLock::acquire(paths, "moat lb backend", LOCK_WAIT)?;
    let r = status::running(paths);
    let live = status::live_config(paths)
        .ok_or_else(|| anyhow!("the load balancer is not running (no `moat lb apply` yet)"))?;
    let services = encode::services_of(&r);
    let svc = services.iter().find(|s| s.name == service).ok_or_else(|| {
        anyhow!(
            "no service {service:?} runs (running: {})",
            services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let matches: Vec<BackendId> = svc
        .backends
        .iter()
        .map(|b| b.id())
        .filter(|id| id.to_string() == backend || id.addr.to_string() == backend)
        .collect();
    let id = match matches.as_slice() {
        [one] => *one,
        [] => bail!(
            "service {service} has no backend {backend:?} (its backends: {})",
            svc.backends
                .iter()
                .map(|b| b.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("{backend:?} names several backends of {service}: give ADDRESS:PORT"),
    };
    let was = encode::state_now(&r, service, id).unwrap_or(State::Up);
    let cfg = LbConfig {
        source: PathBuf::from("(running)"),
        interfaces: vec![],
        table: live.table_size,
        ct_max: super::instance::pinned_max(&paths.pins.join(abi::MAP_CT)).unwrap_or(1 << 20),
        udp_idle_s: live.udp_idle_ns / 1_000_000_000,
        tcp_idle_s: live.tcp_idle_ns / 1_000_000_000,
        services: services.clone(),
    };
    let svc_name = service.to_string();
    let over = move |s: &str, b: BackendId| (s == svc_name && b == id).then_some(to);
    let (gen_, enc) = encode_next(paths, &cfg, &services, &r, &over)?;
    let ifaces: Vec<Iface> = status::links(paths)
        .into_iter()
        .map(|(_, ns, name)| Iface {
            name,
            netns: ns,
            mode: "native".into(),
        })
        .collect();
    if ifaces.is_empty() {
        bail!("the load balancer is attached nowhere; nothing was changed");
    }
    let mut report = swap_in(paths, &cfg, &enc, &ifaces, false, log)?;
    report.generation = gen_;
    // The same file is still in force, at the new generation.
    if let Some(mut src) = crate::source::read(paths)
        && src.generation == live.generation
    {
        src.generation = gen_;
        let _ = crate::source::write(paths, &src);
    }
    Ok((id, was, report))
}

/// `moat lb plan -f new.yaml`: what the new config would move.
pub fn plan_at(paths: &Paths, path: &Path) -> Result<(u32, u32, Vec<SvcPlan>)> {
    let cfg = load_config(path)?;
    let r = status::running(paths);
    let old_services = encode::services_of(&r);
    let old = encode::views(&old_services, &r);
    let new = encode::views(&cfg.services, &r);
    let m_old = if r.table >= 3 { r.table } else { cfg.table };
    let conns: Vec<(String, BackendId)> = status::connections(paths)
        .iter()
        .filter_map(|(_, v)| {
            let (_, s) = r.services.iter().find(|(id, _)| *id == v.svc)?;
            Some((
                encode::svc_name(s),
                BackendId {
                    addr: encode::ip_of(&v.backend, s.family),
                    port: u16::from_be(v.bport),
                },
            ))
        })
        .collect();
    Ok((
        m_old,
        cfg.table,
        plan::plan(&old, m_old, &new, cfg.table, &conns),
    ))
}

/// `moat lb detach`: every link detached, every pin and the state removed.
pub fn detach_at(paths: &Paths) -> Result<Vec<String>> {
    sys::require_privileges("moat lb detach")?;
    if !paths.pins.exists() {
        return Ok(vec![]);
    }
    let said = {
        let _lock = FwLock::acquire(paths, "moat lb detach", LOCK_WAIT)?;
        let mut said = Vec::new();
        for (pin, ns, name) in status::links(paths) {
            leave(paths, &pin, ns.as_deref(), &name)?;
            said.push(match ns {
                Some(n) => format!("{name} (netns {n})"),
                None => name,
            });
        }
        said
    };
    std::fs::remove_dir_all(&paths.pins)
        .with_context(|| format!("removing {}", paths.pins.display()))?;
    if let Some(parent) = paths.pins.parent() {
        let _ = std::fs::remove_dir(parent); // only if empty
    }
    let _ = std::fs::remove_dir_all(&paths.state_dir);
    Ok(said)
}
