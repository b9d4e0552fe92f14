//! One loaded instance of the firewall programs with its policy maps filled.
//! `moat fw apply` loads a fresh instance per policy (maps sized to it) and
//! swaps it in; `moat fw explain` and the tests load a private one and run
//! packets through it with BPF_PROG_TEST_RUN.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, TestRun, TestRunOptions,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key,
        lpm_trie::LpmTrie,
    },
    programs::{SchedClassifier, Xdp},
    util::nr_cpus,
};
use moat_abi::{
    count::CountValue,
    fw::{self as abi, FwClass, FwConfig, FwCtKey, FwCtVal, FwFragKey, FwPortKey, FwVerdict},
};
use moat_core::fw::{Dir, Policy, compile::Compiled};

use crate::loader::{self, Loaded, LogOpts};

/// Progress is reported every STEP entries.
const STEP: usize = 50_000;

/// The physical encoding lives in moat-core (testable without root); the
/// loader only copies its entries into the maps.
pub use moat_core::fw::encode::{Encoded, Sizes};

/// The two conntrack tables: new (one-sided) connections, assured ones.
pub const CT_TABLES: [&str; 2] = [abi::MAP_CT, abi::MAP_CT_ASSURED];

pub struct FwInstance {
    pub bpf: Ebpf,
    pub generation: u32,
    pub loaded: Vec<Loaded>,
}

/// Progress callback: (what, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

impl FwInstance {
    /// Loads both programs with maps sized for `compiled`, sharing the maps
    /// pinned by name (conntrack, fragments, reason counters) under `pin_dir`,
    /// and fills the policy maps and the config.
    pub fn load(
        policy: &Policy,
        compiled: &Compiled,
        generation: u32,
        pin_dir: &Path,
        log: &LogOpts,
        progress: Progress<'_>,
    ) -> Result<FwInstance> {
        Self::load_with_capacity(
            policy,
            compiled,
            generation,
            pin_dir,
            log,
            progress,
            &Sizes::SMALLEST,
        )
    }

    /// Like [`FwInstance::load`], with policy maps of at least `min` entries
    /// (so that [`FwInstance::refill`] can take other policies).
    pub fn load_with_capacity(
        policy: &Policy,
        compiled: &Compiled,
        generation: u32,
        pin_dir: &Path,
        log: &LogOpts,
        progress: Progress<'_>,
        min: &Sizes,
    ) -> Result<FwInstance> {
        let e = Encoded::of(policy, compiled);
        let sizes = e.sizes().at_least(min);
        Self::load_encoded(policy, &e, sizes, generation, pin_dir, log, progress)
    }

    /// Loads both programs with maps of `sizes` and fills them with `e`.
    pub fn load_encoded(
        policy: &Policy,
        e: &Encoded,
        sizes: Sizes,
        generation: u32,
        pin_dir: &Path,
        log: &LogOpts,
        progress: Progress<'_>,
    ) -> Result<FwInstance> {
        // Pins only root controls (created 0700, refused if anyone else could change them).
        crate::sys::private_dir(pin_dir)?;
        let pin_dir = pin_dir.to_path_buf();
        let mut bpf = loader::open_with(moat_ebpf::FW, log, |l| {
            l.map_max_entries(abi::MAP_ADDR4, sizes.addr4)
                .map_max_entries(abi::MAP_ADDR6, sizes.addr6)
                .map_max_entries(abi::MAP_VERDICT, sizes.verdict)
                .map_max_entries(abi::MAP_HOST4, sizes.host4)
                .map_max_entries(abi::MAP_HOST6, sizes.host6)
                .map_max_entries(abi::MAP_PORTS, sizes.ports)
                .map_max_entries(abi::MAP_RULE_STATS, sizes.rules)
                .map_max_entries(abi::MAP_DENSE, sizes.dense)
                .map_max_entries(abi::MAP_HOSTBITS, sizes.hostbits)
                .map_max_entries(abi::MAP_CT, super::pins::ct_max(policy))
                .map_max_entries(abi::MAP_CT_ASSURED, super::pins::ct_max(policy))
                .default_map_pin_directory(pin_dir);
        })?;
        let loaded = vec![
            loader::load_program(&mut bpf, abi::PROG_XDP, log)?,
            loader::load_program(&mut bpf, abi::PROG_TC, log)?,
        ];
        let mut inst = FwInstance {
            bpf,
            generation,
            loaded,
        };
        inst.fill(policy, e, progress)?;
        Ok(inst)
    }

    /// Replaces the policy in this instance's maps (private instances: the
    /// maps are emptied first, so packets in between see no policy).
    pub fn refill(&mut self, policy: &Policy, compiled: &Compiled, generation: u32) -> Result<()> {
        clear_trie::<[u8; 4], FwClass>(self.map_mut(abi::MAP_ADDR4)?)?;
        clear_trie::<[u8; 16], FwClass>(self.map_mut(abi::MAP_ADDR6)?)?;
        clear_trie::<[u8; 8], FwVerdict>(self.map_mut(abi::MAP_VERDICT)?)?;
        clear_hash::<[u8; 4], FwClass>(self.map_mut(abi::MAP_HOST4)?)?;
        clear_hash::<[u8; 16], FwClass>(self.map_mut(abi::MAP_HOST6)?)?;
        clear_hash::<FwPortKey, FwVerdict>(self.map_mut(abi::MAP_PORTS)?)?;
        self.generation = generation;
        self.fill(policy, &Encoded::of(policy, compiled), &mut |_, _, _| {})
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from fw object"))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.bpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from fw object"))
    }

    /// Copies the encoded entries into the maps, then the config.
    fn fill(&mut self, policy: &Policy, e: &Encoded, progress: Progress<'_>) -> Result<()> {
        let total = e.entries();
        let mut done = 0usize;
        let mut tick = |n: usize| {
            let before = done;
            done += n;
            if done / STEP != before / STEP || done == total {
                progress("filling maps", done, total);
            }
        };
        fill_hash(
            self.map_mut(abi::MAP_HOST4)?,
            abi::MAP_HOST4,
            &e.host4,
            &mut tick,
        )?;
        fill_hash(
            self.map_mut(abi::MAP_HOST6)?,
            abi::MAP_HOST6,
            &e.host6,
            &mut tick,
        )?;
        fill_trie(
            self.map_mut(abi::MAP_ADDR4)?,
            abi::MAP_ADDR4,
            &e.addr4,
            &mut tick,
        )?;
        fill_trie(
            self.map_mut(abi::MAP_ADDR6)?,
            abi::MAP_ADDR6,
            &e.addr6,
            &mut tick,
        )?;
        fill_hash(
            self.map_mut(abi::MAP_PORTS)?,
            abi::MAP_PORTS,
            &e.ports,
            &mut tick,
        )?;
        fill_trie(
            self.map_mut(abi::MAP_VERDICT)?,
            abi::MAP_VERDICT,
            &e.verdict,
            &mut tick,
        )?;
        progress("filling maps", total, total);
        let mut cfg = moat_core::fw::encode::config(policy, e, self.generation, cpus()? as u32);
        // The dense table and the host bits, each in one write, if the maps
        // (sized when this instance was loaded) can take them.
        let cap = |m: &aya::maps::Map| match m {
            aya::maps::Map::Array(d) => d.info().map_or(0, |i| i.max_entries()),
            _ => 0,
        };
        match &e.dense {
            Some((_, d)) if cap(self.map(abi::MAP_DENSE)?) as usize >= d.len() => {
                write_mmapable(self.map(abi::MAP_DENSE)?, as_bytes(d))?;
            }
            _ => cfg.maps2 &= !abi::HAS2_DENSE,
        }
        if cfg.maps2 & abi::HAS2_HOSTBITS != 0 {
            let have = cap(self.map(abi::MAP_HOSTBITS)?);
            let words = e.hostbits_words().min(have.max(1));
            // (a power of two: both are)
            write_mmapable(self.map(abi::MAP_HOSTBITS)?, as_bytes(&e.hostbits(words)))?;
            cfg.hostbits_mask = words * 64 - 1;
        }
        let mut a: Array<_, FwConfig> = Array::try_from(self.map_mut(abi::MAP_CONFIG)?)?;
        a.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .bpf
            .program_mut(abi::PROG_XDP)
            .ok_or_else(|| anyhow!("no {}", abi::PROG_XDP))?
            .try_into()?)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self
            .bpf
            .program_mut(abi::PROG_TC)
            .ok_or_else(|| anyhow!("no {}", abi::PROG_TC))?
            .try_into()?)
    }

    /// Per-rule counters summed over CPUs (index 0: the defaults).
    pub fn rule_stats(&self) -> Result<Vec<CountValue>> {
        read_percpu(self.map(abi::MAP_RULE_STATS)?)
    }

    /// Per-reason counters summed over CPUs.
    pub fn stats(&self) -> Result<Vec<CountValue>> {
        read_percpu(self.map(abi::MAP_STATS)?)
    }

    /// Removes every conntrack, fragment and denied-flow entry (private
    /// instances only).
    pub fn clear_state(&mut self) -> Result<()> {
        // The presence filter's slots of the entries removed go back to 0.
        let keys = self.ct_keys()?;
        for t in CT_TABLES {
            clear_hash::<FwCtKey, FwCtVal>(self.map_mut(t)?)?;
        }
        with_ctseen(self.map(abi::MAP_CTSEEN)?, |s| {
            for k in &keys {
                s[ctseen_idx(ct_hash(k))].store(0, Ordering::Relaxed);
            }
        })?;
        zero_mmapable(
            self.map(abi::MAP_FLOWS)?,
            abi::FLOW_SLOTS as usize * std::mem::size_of::<abi::FwFlowSlot>(),
        )?;
        clear_hash::<FwFragKey, u32>(self.map_mut(abi::MAP_FRAG)?)
    }

    /// The keys of both conntrack tables.
    pub fn ct_keys(&self) -> Result<Vec<FwCtKey>> {
        let mut out = Vec::new();
        for t in CT_TABLES {
            let ct: BpfHashMap<_, FwCtKey, FwCtVal> = BpfHashMap::try_from(self.map(t)?)?;
            out.extend(ct.keys().filter_map(Result::ok));
        }
        Ok(out)
    }

    /// The entry of `k` and whether it is assured (in `fw_ct_assured`).
    pub fn ct_get(&self, k: &FwCtKey) -> Result<Option<(FwCtVal, bool)>> {
        for t in CT_TABLES {
            let ct: BpfHashMap<_, FwCtKey, FwCtVal> = BpfHashMap::try_from(self.map(t)?)?;
            if let Ok(v) = ct.get(k, 0) {
                return Ok(Some((v, t == abi::MAP_CT_ASSURED)));
            }
        }
        Ok(None)
    }

    /// The event counters (`fw_evstats`, summed over CPUs), indexed by `EV_*`.
    pub fn event_stats(&self) -> Result<Vec<u64>> {
        let a: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.map(abi::MAP_EVSTATS)?)?;
        let mut ev = (0..abi::EV_MAX)
            .map(|i| Ok(a.get(&i, 0)?.iter().sum()))
            .collect::<Result<Vec<u64>>>()?;
        fill_seen(&mut ev);
        Ok(ev)
    }

    /// The conntrack keys, and the presence-filter counter of each key's slot.
    pub fn ct_keys_seen(&self) -> Result<Vec<(FwCtKey, u32)>> {
        let seen: Array<_, abi::FwLine> = Array::try_from(self.map(abi::MAP_CTSEEN)?)?;
        self.ct_keys()?
            .into_iter()
            .map(|k| Ok((k, ctseen_get(&seen, ct_hash(&k))?)))
            .collect()
    }

    /// Marks every conntrack entry in the presence filter whose slot is 0
    /// (entries made by a program without the filter); returns how many.
    /// The mark is a count no run of deletes brings back to 0, so racing
    /// the running program's own +1/-1 can only leave a slot too high.
    pub fn seed_ctseen(&mut self) -> Result<usize> {
        let keys = self.ct_keys()?;
        let mut n = 0;
        with_ctseen(self.map(abi::MAP_CTSEEN)?, |s| {
            for k in &keys {
                let slot = &s[ctseen_idx(ct_hash(k))];
                if slot.load(Ordering::Relaxed) == 0 {
                    slot.fetch_add(1 << 30, Ordering::Relaxed);
                    n += 1;
                }
            }
        })?;
        Ok(n)
    }

    /// Slots of the presence filter that are not zero.
    pub fn ctseen_nonzero(&self) -> Result<usize> {
        let seen: Array<_, abi::FwLine> = Array::try_from(self.map(abi::MAP_CTSEEN)?)?;
        let mut n = 0;
        for line in seen.iter() {
            n += line?.slot.iter().filter(|x| **x != 0).count();
        }
        Ok(n)
    }

    /// Number of conntrack entries.
    pub fn ct_entries(&self) -> Result<usize> {
        Ok(self.ct_keys()?.len())
    }

    /// Runs one frame through the program of `dir` with BPF_PROG_TEST_RUN.
    /// Returns (passed, deciding rule id (0 = default) if a rule counter
    /// moved, reason index).
    pub fn run(&mut self, dir: Dir, frame: &[u8]) -> Result<RunResult> {
        let rules_before = self.rule_stats()?;
        let stats_before = self.stats()?;
        let mut out = vec![0u8; frame.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let (ret, passed) = match dir {
            Dir::Ingress => {
                let r = self
                    .xdp()?
                    .test_run(opts)
                    .context("BPF_PROG_TEST_RUN of fw_xdp")?;
                (r.return_value, r.return_value == 2)
            }
            Dir::Egress => {
                let r = self
                    .tc()?
                    .test_run(opts)
                    .context("BPF_PROG_TEST_RUN of fw_tc_egress")?;
                (r.return_value, r.return_value == 0)
            }
        };
        let rules_after = self.rule_stats()?;
        let stats_after = self.stats()?;
        let rule =
            (0..rules_after.len()).find(|&i| rules_after[i].packets != rules_before[i].packets);
        let reason =
            (0..stats_after.len()).find(|&i| stats_after[i].packets != stats_before[i].packets);
        Ok(RunResult {
            passed,
            return_value: ret,
            rule: rule.map(|r| r as u32),
            reason: reason.map(|r| r as u32),
        })
    }
}

/// Inserts (key, value) entries into the hash map `name`.
fn fill_hash<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut aya::maps::Map,
    name: &str,
    entries: &[(K, V)],
    tick: &mut dyn FnMut(usize),
) -> Result<()> {
    let mut h: BpfHashMap<_, K, V> = BpfHashMap::try_from(map)?;
    for (i, (k, v)) in entries.iter().enumerate() {
        h.insert(*k, *v, 0)
            .with_context(|| format!("inserting {k:?} into {name}"))?;
        if i % STEP == STEP - 1 {
            tick(STEP);
        }
    }
    tick(entries.len() % STEP);
    Ok(())
}

/// Inserts (prefix length, key data, value) entries into the LPM trie `name`.
fn fill_trie<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut aya::maps::Map,
    name: &str,
    entries: &[(u32, K, V)],
    tick: &mut dyn FnMut(usize),
) -> Result<()> {
    let mut t: LpmTrie<_, K, V> = LpmTrie::try_from(map)?;
    for (i, (plen, k, v)) in entries.iter().enumerate() {
        t.insert(&Key::new(*plen, *k), *v, 0)
            .with_context(|| format!("inserting {k:?}/{plen} into {name}"))?;
        if i % STEP == STEP - 1 {
            tick(STEP);
        }
    }
    tick(entries.len() % STEP);
    Ok(())
}

fn clear_trie<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::Map) -> Result<()> {
    let mut t: LpmTrie<_, K, V> = LpmTrie::try_from(map)?;
    let keys: Vec<Key<K>> = t.keys().filter_map(Result::ok).collect();
    for k in keys {
        t.remove(&k)?;
    }
    Ok(())
}

/// The programs do not count `EV_SEEN` (one counter less per dropped
/// packet): it is the sum of the four outcomes, filled in here.
pub fn fill_seen(ev: &mut [u64]) {
    if ev.len() > abi::EV_LOST as usize {
        ev[abi::EV_SEEN as usize] = ev[abi::EV_EMITTED as usize]
            + ev[abi::EV_SAMPLED_OUT as usize]
            + ev[abi::EV_RATE_LIMITED as usize]
            + ev[abi::EV_LOST as usize];
    }
}

/// `fw_ct_hash` of fw.bpf.c (the key's five native-endian 64-bit words,
/// multiplied, folded and mixed): masked, the fw_ctseen and fw_flows slots of a connection.
pub fn ct_hash(k: &FwCtKey) -> u32 {
    // SAFETY: FwCtKey is #[repr(C)], 40 bytes of integers and byte arrays,
    // no padding; reading it as bytes is sound.
    let bytes: &[u8] = unsafe {
        std::slice::from_raw_parts(
            (k as *const FwCtKey).cast::<u8>(),
            std::mem::size_of::<FwCtKey>(),
        )
    };
    const K: [u64; 5] = [
        0x9E37_79B9_7F4A_7C15,
        0xC2B2_AE3D_27D4_EB4F,
        0x1656_67B1_9E37_79F9,
        0xD6E8_FEB8_6659_FD93,
        0xFF51_AFD7_ED55_8CCD,
    ];
    let mut h = bytes
        .chunks_exact(8)
        .zip(K)
        .map(|(w, k)| u64::from_ne_bytes(w.try_into().expect("8 bytes")).wrapping_mul(k))
        .fold(0, |a, b| a ^ b);
    h ^= h >> 32;
    h = h.wrapping_mul(K[0]);
    (h >> 32) as u32
}

fn as_bytes(v: &[u64]) -> &[u8] {
    // SAFETY: u64s are plain bytes; the slice covers exactly their memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Copies `data` to the start of a BPF_F_MMAPABLE array in one write.
pub(crate) fn write_mmapable(map: &aya::maps::Map, data: &[u8]) -> Result<()> {
    with_mmap(map, data.len(), |p| {
        // SAFETY: p maps at least data.len() bytes (see with_mmap).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    })
}

/// Zeroes the first `bytes` of a BPF_F_MMAPABLE array in one write.
fn zero_mmapable(map: &aya::maps::Map, bytes: usize) -> Result<()> {
    with_mmap(map, bytes, |p| {
        // SAFETY: p maps at least `bytes` bytes (see with_mmap).
        unsafe { std::ptr::write_bytes(p, 0, bytes) }
    })
}

/// Runs `f` on a shared writable mapping of the first `bytes` of an
/// array map (BPF_F_MMAPABLE; the map must hold at least that much).
fn with_mmap(map: &aya::maps::Map, bytes: usize, f: impl FnOnce(*mut u8)) -> Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let aya::maps::Map::Array(data) = map else {
        return Err(anyhow!("not an array map"));
    };
    let fd = data.fd().as_fd().as_raw_fd();
    // SAFETY: a shared mapping of the map's own memory, `bytes` long (the
    // map holds at least that much); written once and unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(anyhow!(
                "mapping an array map: {}",
                std::io::Error::last_os_error()
            ));
        }
        f(p.cast::<u8>());
        libc::munmap(p, bytes);
    }
    Ok(())
}

fn clear_hash<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::Map) -> Result<()> {
    let mut h: BpfHashMap<_, K, V> = BpfHashMap::try_from(map)?;
    let keys: Vec<K> = h.keys().filter_map(Result::ok).collect();
    for k in keys {
        h.remove(&k)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub passed: bool,
    pub return_value: u32,
    /// Rule id whose counter moved (0: default), if any.
    pub rule: Option<u32>,
    /// Index into `moat_abi::fw::STAT_NAMES`.
    pub reason: Option<u32>,
}

/// Sums a per-CPU array of `CountValue` over CPUs.
pub fn read_percpu(map: &aya::maps::Map) -> Result<Vec<CountValue>> {
    let arr: PerCpuArray<_, CountValue> = PerCpuArray::try_from(map)?;
    sum_percpu(&arr)
}

pub fn sum_percpu<T: std::borrow::Borrow<MapData>>(
    arr: &PerCpuArray<T, CountValue>,
) -> Result<Vec<CountValue>> {
    let mut out = Vec::with_capacity(arr.len() as usize);
    for i in 0..arr.len() {
        let v: PerCpuValues<CountValue> = arr.get(&i, 0)?;
        out.push(v.iter().fold(CountValue::default(), |a, b| CountValue {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        }));
    }
    Ok(out)
}

/// Number of possible CPUs (for per-CPU writes).
pub fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(_, e)| anyhow!("reading possible CPUs: {e}"))
}

fn ctseen_get<T: std::borrow::Borrow<aya::maps::MapData>>(
    a: &Array<T, abi::FwLine>,
    h: u32,
) -> Result<u32> {
    let s = h & (abi::CTSEEN_SLOTS - 1);
    Ok(a.get(&(s / abi::LINE_SLOTS), 0)?.slot[(s % abi::LINE_SLOTS) as usize])
}

/// Runs `f` on the presence filter's slots as atomics (the map is
/// BPF_F_MMAPABLE): a slot is changed alone, as the programs change theirs,
/// so a write here never loses a count of theirs in a neighbouring slot of
/// the same entry (a map update would rewrite all sixteen).
fn with_ctseen(map: &aya::maps::Map, f: impl FnOnce(&[AtomicU32])) -> Result<()> {
    let n = abi::CTSEEN_SLOTS as usize;
    with_mmap(map, n * 4, |p| {
        // SAFETY: p maps the n u32 slots (page aligned); the programs only
        // change them with atomic operations too.
        f(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), n) })
    })
}

fn ctseen_idx(h: u32) -> usize {
    (h & (abi::CTSEEN_SLOTS - 1)) as usize
}
