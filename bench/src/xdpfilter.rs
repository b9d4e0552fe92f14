//! xdp-filter (xdp-tools) as a peer: loaded with its own CLI on a lab
//! interface, entries beyond the first written straight into its pinned
//! maps (its CLI starts one process per entry, minutes for 100k), with the
//! value its CLI wrote for the first entry.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    maps::{Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::Xdp,
};

use aya_obj::programs::XdpAttachType;

use crate::live::nsrun;

/// xdp-filter loaded on `iface` in `ns`; unloaded on drop. xdp-filter pins
/// its maps in one global bpffs directory: one instance at a time.
pub struct XdpFilter {
    ns: String,
    iface: String,
    pin: Option<PathBuf>,
    _lock: std::fs::File,
}

/// Entries xdp-filter's address maps hold (max_entries in its objects).
pub const MAX_ENTRIES: usize = 10_000;

const PIN_DIR: &str = "/sys/fs/bpf/xdp-filter";

impl XdpFilter {
    /// `xdp-filter load IFACE` (default policy allow, all features).
    pub fn load(ns: &str, iface: &str) -> Result<XdpFilter> {
        // Held until drop: other benchmark runs (parallel tests) wait. The
        // lock is on bpffs' root, where xdp-filter pins its state (a lock
        // file would be left behind).
        let lock = std::fs::File::open("/sys/fs/bpf")?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        nsrun(ns, &["xdp-filter", "load", iface], None)
            .context("xdp-filter load (is xdp-tools installed?)")?;
        Ok(XdpFilter {
            ns: ns.into(),
            iface: iface.into(),
            pin: None,
            _lock: lock,
        })
    }

    /// Denies packets to `port` (udp or tcp).
    pub fn deny_dst_port(&self, port: u16, proto: &str) -> Result<()> {
        nsrun(
            &self.ns,
            &[
                "xdp-filter",
                "port",
                &port.to_string(),
                "-p",
                proto,
                "-m",
                "dst",
            ],
            None,
        )?;
        Ok(())
    }

    /// Denies packets from each address (all of one family).
    pub fn deny_sources(&self, addrs: &[IpAddr]) -> Result<()> {
        let Some(first) = addrs.first() else {
            return Ok(());
        };
        nsrun(
            &self.ns,
            &["xdp-filter", "ip", &first.to_string(), "-m", "src"],
            None,
        )?;
        if addrs.len() == 1 {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        match first {
            IpAddr::V4(a) => {
                let mut m = open::<[u8; 4]>("filter_ipv4")?;
                let v = flags(&m.get(&a.octets(), 0)?);
                for x in &addrs[1..] {
                    if let IpAddr::V4(x) = x {
                        m.insert(x.octets(), PerCpuValues::try_from(vec![v; cpus])?, 0)?;
                    }
                }
            }
            IpAddr::V6(a) => {
                let mut m = open::<[u8; 16]>("filter_ipv6")?;
                let v = flags(&m.get(&a.octets(), 0)?);
                for x in &addrs[1..] {
                    if let IpAddr::V6(x) = x {
                        m.insert(x.octets(), PerCpuValues::try_from(vec![v; cpus])?, 0)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Packets xdp-filter dropped so far (its own statistics).
    pub fn drops(&self) -> Result<u64> {
        drops_in(&self.ns)
    }

    /// The attached program, for BPF_PROG_TEST_RUN (pinned by id with
    /// bpftool, opened from the pin).
    pub fn program(&mut self) -> Result<Xdp> {
        let out = nsrun(
            &self.ns,
            &["ip", "-j", "-d", "link", "show", "dev", &self.iface],
            None,
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let id = v[0]["xdp"]["prog"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no XDP program on {}", self.iface))?;
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/moat-bench-xdpfilt-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&pin);
        let st = std::process::Command::new("bpftool")
            .args(["prog", "pin", "id", &id.to_string()])
            .arg(&pin)
            .status()
            .context("running bpftool")?;
        if !st.success() {
            return Err(anyhow!("bpftool prog pin id {id} failed"));
        }
        self.pin = Some(pin.clone());
        Ok(Xdp::from_pin(&pin, XdpAttachType::Interface)?)
    }
}

/// xdp-filter's drop count as its `status` prints it, in namespace `ns`.
pub fn drops_in(ns: &str) -> Result<u64> {
    let s = nsrun(ns, &["xdp-filter", "status"], None)?;
    let line = s
        .lines()
        .find(|l| l.trim_start().starts_with("XDP_DROP"))
        .ok_or_else(|| anyhow!("no XDP_DROP line in xdp-filter status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn open<K: aya::Pod>(name: &str) -> Result<PerCpuHashMap<MapData, K, u64>> {
    let data = MapData::from_pin(format!("{PIN_DIR}/{name}"))
        .with_context(|| format!("opening xdp-filter's {name} pin"))?;
    Ok(PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?)
}

/// The mode bits xdp-filter stored for an entry (its hit counters live in
/// the other bits of the per-CPU values; they start at zero).
fn flags(v: &PerCpuValues<u64>) -> u64 {
    v.iter().copied().fold(0u64, |a, b| a | b)
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Some(p) = &self.pin {
            let _ = std::fs::remove_file(p);
        }
        let _ = nsrun(&self.ns, &["xdp-filter", "unload", &self.iface], None);
        let _ = std::fs::remove_dir(PIN_DIR);
        // libxdp's own directory, if it left it empty.
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}
