//! `moat count`: the XDP packet counter, attached, read and detached.

use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{ProgramError, XdpMode},
};
use moat_abi::count::{CLASS_MAX, CountValue, MAP_STATS, PROG_XDP};
use moat_core::counters::{Counts, Report};

use crate::{
    loader::{self, Loaded, LogOpts},
    sys,
};

/// XDP attach mode as the user names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In the driver (fastest; veth, most physical NICs).
    Native,
    /// Generic XDP in the kernel stack (any interface, slower).
    Skb,
}

impl Mode {
    fn xdp(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }
}

/// The counter, attached to one interface. Dropping it detaches the program
/// (the link is owned by the fd inside `bpf`; nothing is pinned).
pub struct Counter {
    bpf: Ebpf,
    pub loaded: Loaded,
    pub iface: String,
}

impl Counter {
    /// Loads the counter and attaches it to `iface` (inside `netns` if given).
    pub fn attach(iface: &str, mode: Mode, netns: Option<&str>, log: &LogOpts) -> Result<Counter> {
        let mut bpf = loader::open(moat_ebpf::COUNT, log)?;
        let (prog, loaded) = loader::load_xdp(&mut bpf, PROG_XDP, log)?;
        sys::in_netns(netns, || {
            prog.attach(iface, mode.xdp())
                .map_err(|e| attach_error(e, iface, mode, netns))
        })?;
        Ok(Counter {
            bpf,
            loaded,
            iface: iface.to_string(),
        })
    }

    /// Current totals, summed over CPUs.
    pub fn read(&self) -> Result<Counts> {
        let map = self
            .bpf
            .map(MAP_STATS)
            .ok_or_else(|| anyhow!("map {MAP_STATS} missing from object"))?;
        let arr: PerCpuArray<_, CountValue> = PerCpuArray::try_from(map)?;
        let mut per_class = Vec::with_capacity(CLASS_MAX as usize);
        for class in 0..CLASS_MAX {
            let v = arr
                .get(&class, 0)
                .with_context(|| format!("reading {MAP_STATS}[{class}]"))?;
            per_class.push(v.iter().copied().collect::<Vec<_>>());
        }
        Ok(Counts::from_percpu(per_class))
    }
}

fn attach_error(e: ProgramError, iface: &str, mode: Mode, netns: Option<&str>) -> anyhow::Error {
    let where_ = netns
        .map(|n| format!(" in network namespace {n}"))
        .unwrap_or_default();
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    match (&e, errno) {
        (ProgramError::UnknownInterface { .. }, _) => {
            anyhow!("no network interface named {iface}{where_} (see `ip link`)")
        }
        (_, Some(libc::EBUSY)) | (_, Some(libc::EEXIST)) => anyhow!(
            "{iface}{where_} already has an XDP program attached; moat will not replace it. \
             Inspect it with `ip -d link show dev {iface}` and detach it first if it is stale"
        ),
        (_, Some(n @ (libc::EOPNOTSUPP | libc::EINVAL))) if mode == Mode::Native => anyhow!(
            "the driver of {iface}{where_} lacks native XDP ({}): try --mode skb",
            sys::errno_words(n)
        ),
        (_, Some(n)) => anyhow!(
            "attaching {PROG_XDP} to {iface}{where_} ({} mode): {}",
            mode.name(),
            sys::errno_words(n)
        ),
        _ => anyhow!(
            "attaching {PROG_XDP} to {iface}{where_} ({} mode): {e}",
            mode.name()
        ),
    }
}

/// Options of `moat count`.
pub struct CountOpts {
    pub iface: String,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub json: bool,
    pub mode: Mode,
    pub netns: Option<String>,
}

/// Runs `moat count` until `--duration` passes or SIGINT/SIGTERM arrives.
pub fn run(o: &CountOpts, log: &LogOpts) -> Result<()> {
    if o.interval.is_zero() {
        bail!("--interval must be greater than 0");
    }
    sys::require_privileges("moat count")?;
    sys::ensure_bpffs()?;
    let stop = sys::stop_flag()?;
    let counter = Counter::attach(&o.iface, o.mode, o.netns.as_deref(), log)?;
    eprintln!("{}", counter.loaded);
    eprintln!(
        "attached to {} ({} XDP{}); counting every {:.1}s{}; Ctrl-C to stop",
        o.iface,
        o.mode.name(),
        o.netns
            .as_deref()
            .map(|n| format!(", netns {n}"))
            .unwrap_or_default(),
        o.interval.as_secs_f64(),
        o.duration
            .map(|d| format!(" for {:.1}s", d.as_secs_f64()))
            .unwrap_or_default(),
    );
    let result = count_loop(&counter, o, &stop);
    drop(counter); // detach before reporting that we did
    eprintln!("detached from {}", o.iface);
    result
}

fn count_loop(counter: &Counter, o: &CountOpts, stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let zero = counter.read()?;
    let mut prev = zero;
    let mut prev_t = start;
    let mut out = std::io::stdout().lock();
    loop {
        let deadline = o.duration.map(|d| start + d);
        let mut wait = o.interval;
        if let Some(dl) = deadline {
            wait = wait.min(dl.saturating_duration_since(Instant::now()));
        }
        let stopped = sys::sleep_unless(stop, wait);
        let now_t = Instant::now();
        let now = counter.read()?;
        let finished = stopped || deadline.is_some_and(|dl| now_t >= dl);
        let span = now_t.duration_since(prev_t).as_secs_f64();
        if span > 0.05 || !finished {
            let r = Report {
                interface: o.iface.clone(),
                elapsed: now_t.duration_since(start).as_secs_f64(),
                span,
                counts: now.since(&prev),
                final_: false,
            };
            emit(&mut out, &r, o.json)?;
        }
        prev = now;
        prev_t = now_t;
        if finished {
            let elapsed = now_t.duration_since(start).as_secs_f64();
            let r = Report {
                interface: o.iface.clone(),
                elapsed,
                span: elapsed,
                counts: now.since(&zero),
                final_: true,
            };
            emit(&mut out, &r, o.json)?;
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn emit(out: &mut impl Write, r: &Report, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", r.to_json())?;
    } else {
        writeln!(out, "{}", r.to_table())?;
    }
    out.flush()?;
    Ok(())
}
