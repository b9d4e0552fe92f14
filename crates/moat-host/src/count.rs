//! The XDP packet counter behind `moat count` and `moat demo`: attached, read, detached.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{ProgramError, XdpMode},
};
use moat_abi::count::{CLASS_MAX, CountValue, MAP_STATS, PROG_XDP};
use moat_core::counters::Counts;

use crate::{
    loader::{self, Loaded, LogOpts},
    sys,
};

/// XDP attach mode as the user names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    /// In the driver (fastest; veth, most physical NICs).
    Native,
    /// Generic XDP in the kernel stack (any interface, slower).
    Skb,
}

impl Mode {
    pub fn xdp(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
    pub fn name(self) -> &'static str {
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
