//! One loaded instance of `lb_xdp` with its per-instance maps (VIPs, Maglev
//! tables, config) filled from `moat_core::lb::encode`, sharing the pinned
//! maps (backends, services, connections, counters) with every instance.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, TestRun, TestRunOptions,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::Xdp,
};
use moat_abi::{
    count::CountValue,
    lb::{self as abi, LbBackend, LbConfig, LbCtKey, LbCtVal, LbSvc},
};
use moat_core::lb::encode::{Encoded, Running};

use crate::fw::instance::sum_percpu;
use crate::loader::{self, Loaded, LogOpts};

pub struct LbInstance {
    pub bpf: Ebpf,
    pub loaded: Loaded,
    pub generation: u32,
}

/// max_entries of the map pinned at `path`, if there is one.
pub fn pinned_max(path: &Path) -> Option<u32> {
    let d = MapData::from_pin(path).ok()?;
    d.info().ok().map(|i| i.max_entries())
}

impl LbInstance {
    /// Loads `lb_xdp` with maps sized for `e`, the shared maps pinned under
    /// `pin_dir` (created there if absent; an existing connection table keeps
    /// its size), and fills the per-instance maps. The shared maps are not
    /// written: [`LbInstance::write_shared`] does that.
    pub fn load(e: &Encoded, ct_max: u32, pin_dir: &Path, log: &LogOpts) -> Result<LbInstance> {
        crate::sys::private_dir(pin_dir)?;
        let ct = pinned_max(&pin_dir.join(abi::MAP_CT)).unwrap_or(ct_max);
        let rev = pinned_max(&pin_dir.join(abi::MAP_REV)).unwrap_or(ct_max);
        let pin_dir = pin_dir.to_path_buf();
        let mut bpf = loader::open_with(moat_ebpf::LB, log, |l| {
            l.map_max_entries(abi::MAP_VIPS, (e.vips.len() as u32).max(1))
                .map_max_entries(abi::MAP_BACK, (e.back.len() as u32).max(1))
                .map_max_entries(abi::MAP_MAGLEV, (e.maglev.len() as u32).max(1))
                .map_max_entries(abi::MAP_CT, ct)
                .map_max_entries(abi::MAP_REV, rev)
                .default_map_pin_directory(pin_dir);
        })?;
        let loaded = loader::load_program(&mut bpf, abi::PROG_XDP, log)?;
        let mut inst = LbInstance {
            bpf,
            loaded,
            generation: e.config.generation,
        };
        inst.fill(e)?;
        Ok(inst)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} is not in the object"))
    }

    fn fill(&mut self, e: &Encoded) -> Result<()> {
        {
            let mut v: BpfHashMap<_, abi::LbVipKey, abi::LbVip> =
                BpfHashMap::try_from(self.map_mut(abi::MAP_VIPS)?)?;
            for (k, val) in &e.vips {
                v.insert(k, val, 0)
                    .with_context(|| format!("inserting {k:?} into {}", abi::MAP_VIPS))?;
            }
        }
        {
            let mut v: BpfHashMap<_, abi::LbVipKey, abi::LbBack> =
                BpfHashMap::try_from(self.map_mut(abi::MAP_BACK)?)?;
            for (k, val) in &e.back {
                v.insert(k, val, 0)
                    .with_context(|| format!("inserting {k:?} into {}", abi::MAP_BACK))?;
            }
        }
        if !e.maglev.is_empty() {
            // Every table in one write through the mapping (hundreds of
            // thousands of entries: one syscall each would take seconds).
            // Array elements sit at an 8-byte stride (the kernel rounds the
            // value size up), so each u32 is followed by 4 bytes of padding.
            let bytes: Vec<u8> = e
                .maglev
                .iter()
                .flat_map(|v| {
                    let mut w = [0u8; 8];
                    w[..4].copy_from_slice(&v.to_ne_bytes());
                    w
                })
                .collect();
            let m = self
                .bpf
                .map(abi::MAP_MAGLEV)
                .ok_or_else(|| anyhow!("no {}", abi::MAP_MAGLEV))?;
            crate::fw::instance::write_mmapable(m, &bytes)
                .with_context(|| format!("filling {}", abi::MAP_MAGLEV))?;
        }
        let mut c: Array<_, LbConfig> = Array::try_from(self.map_mut(abi::MAP_CONFIG)?)?;
        c.set(0, e.config, 0)
            .with_context(|| format!("writing {}", abi::MAP_CONFIG))?;
        Ok(())
    }

    /// Writes the config's services and backends into the shared maps and
    /// returns what they held before (for [`LbInstance::restore_shared`]).
    pub fn write_shared(&mut self, e: &Encoded) -> Result<Running> {
        let mut before = Running::default();
        {
            let mut s: Array<_, LbSvc> = Array::try_from(self.map_mut(abi::MAP_SVCS)?)?;
            for (id, v) in &e.services {
                before.services.push((*id, s.get(id, 0)?));
                s.set(*id, v, 0)?;
            }
        }
        let mut b: Array<_, LbBackend> = Array::try_from(self.map_mut(abi::MAP_BACKENDS)?)?;
        for (slot, v) in &e.backends {
            before.backends.push((*slot, b.get(slot, 0)?));
            b.set(*slot, v, 0)?;
        }
        Ok(before)
    }

    /// Puts back what [`LbInstance::write_shared`] replaced.
    pub fn restore_shared(&mut self, before: &Running) -> Result<()> {
        {
            let mut s: Array<_, LbSvc> = Array::try_from(self.map_mut(abi::MAP_SVCS)?)?;
            for (id, v) in &before.services {
                s.set(*id, v, 0)?;
            }
        }
        let mut b: Array<_, LbBackend> = Array::try_from(self.map_mut(abi::MAP_BACKENDS)?)?;
        for (slot, v) in &before.backends {
            b.set(*slot, v, 0)?;
        }
        Ok(())
    }

    /// Empties the slots and service ids the new config dropped (once the
    /// new instance runs everywhere).
    pub fn drop_shared(&mut self, e: &Encoded) -> Result<()> {
        {
            let mut s: Array<_, LbSvc> = Array::try_from(self.map_mut(abi::MAP_SVCS)?)?;
            for id in &e.drop_services {
                s.set(*id, LbSvc::default(), 0)?;
            }
        }
        let mut b: Array<_, LbBackend> = Array::try_from(self.map_mut(abi::MAP_BACKENDS)?)?;
        for slot in &e.drop_backends {
            b.set(*slot, LbBackend::default(), 0)?;
        }
        Ok(())
    }

    /// Lets the program run on interface `ifindex` (`lb_ifaces`, shared).
    pub fn allow_iface(&mut self, ifindex: u32) -> Result<()> {
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(abi::MAP_IFACES)?)?;
        a.set(ifindex % abi::IF_SLOTS, ifindex, 0)?;
        Ok(())
    }

    /// What slot `ifindex` of `lb_ifaces` holds now.
    pub fn iface_slot(&self, ifindex: u32) -> Result<u32> {
        let m = self
            .bpf
            .map(abi::MAP_IFACES)
            .ok_or_else(|| anyhow!("no {}", abi::MAP_IFACES))?;
        let a: Array<_, u32> = Array::try_from(m)?;
        Ok(a.get(&(ifindex % abi::IF_SLOTS), 0)?)
    }

    /// Empties the `lb_ifaces` slot of `ifindex` (if it holds it).
    pub fn forbid_iface(&mut self, ifindex: u32) -> Result<()> {
        if self.iface_slot(ifindex)? == ifindex {
            let mut a: Array<_, u32> = Array::try_from(self.map_mut(abi::MAP_IFACES)?)?;
            a.set(ifindex % abi::IF_SLOTS, 0, 0)?;
        }
        Ok(())
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        self.bpf
            .program_mut(abi::PROG_XDP)
            .ok_or_else(|| anyhow!("no {}", abi::PROG_XDP))?
            .try_into()
            .map_err(|e| anyhow!("{}: {e}", abi::PROG_XDP))
    }

    /// Per-reason counters (`LB_STAT_*`), summed over CPUs.
    pub fn stats(&self) -> Result<Vec<CountValue>> {
        percpu(&self.bpf, abi::MAP_STATS)
    }

    /// Per backend slot: packets, bytes, new connections.
    pub fn backend_stats(&self) -> Result<Vec<abi::LbBcount>> {
        let m = self
            .bpf
            .map(abi::MAP_BSTATS)
            .ok_or_else(|| anyhow!("no {}", abi::MAP_BSTATS))?;
        super::status::sum_bcounts(&aya::maps::PerCpuArray::try_from(m)?)
    }

    pub fn service_stats(&self) -> Result<Vec<CountValue>> {
        percpu(&self.bpf, abi::MAP_SSTATS)
    }

    pub fn conns(&self) -> Result<Vec<(LbCtKey, LbCtVal)>> {
        let m = self
            .bpf
            .map(abi::MAP_CT)
            .ok_or_else(|| anyhow!("no {}", abi::MAP_CT))?;
        let h: BpfHashMap<_, LbCtKey, LbCtVal> = BpfHashMap::try_from(m)?;
        Ok(h.iter().filter_map(Result::ok).collect())
    }

    /// Runs one frame through lb_xdp (BPF_PROG_TEST_RUN), as if it arrived
    /// on `ifindex` (of the calling thread's network namespace) when given.
    pub fn run(&mut self, frame: &[u8], ifindex: Option<u32>) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data (metadata length), data_end, data_meta,
        // ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex.unwrap_or(0), 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ifindex.map(|_| &ctx[..]),
            ..Default::default()
        };
        let r = self
            .xdp()?
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of lb_xdp")?;
        let n = (r.data_size_out as usize).min(out.len());
        out.truncate(n);
        Ok((r.return_value, out))
    }
}

fn percpu(bpf: &Ebpf, name: &str) -> Result<Vec<CountValue>> {
    let m = bpf.map(name).ok_or_else(|| anyhow!("no map {name}"))?;
    sum_percpu(&aya::maps::PerCpuArray::<_, CountValue>::try_from(m)?)
}
