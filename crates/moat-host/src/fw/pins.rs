//! Pinned maps whose shape changes: the conntrack tables when the policy's
//! `conntrack: { max }` changes, and maps whose layout an older moat pinned
//! differently. The running programs hold their maps by fd, so the old pin
//! can be moved aside (kept open here), the new instance creates and pins
//! maps of the new shape, and what the old maps hold is copied over: before
//! the swap, and once more after it (entries the old program added in
//! between). A failed apply puts the old pins back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapType, PerCpuArray, PerCpuValues};
use moat_abi::{
    count::CountValue,
    fw::{self as abi, FwCtKey, FwCtVal},
};

use super::instance::cpus;

/// Connections each conntrack table holds when the policy does not say:
/// nf_conntrack's rule of thumb (one entry per 64 KiB of memory), at least
/// 16,384 and at most 262,144.
pub fn default_ct_max() -> u32 {
    let kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    kb.map_or(65_536, |kb| (kb / 64).clamp(16_384, 262_144) as u32)
}

/// The conntrack size a policy asks for.
pub fn ct_max(p: &moat_core::fw::Policy) -> u32 {
    p.timeouts.max.unwrap_or_else(default_ct_max)
}

/// What the program expects a pin to be.
struct Want {
    name: &'static str,
    kind: MapType,
    value_size: u32,
    max_entries: u32,
    /// How to carry the old contents over.
    carry: Carry,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Carry {
    Conntrack,
    PerCpuCounts,
    PerCpuU64,
    Nothing,
}

/// An old pin moved aside: its map (held open) and where it was.
struct Aside {
    map: MapData,
    path: PathBuf,
    carry: Carry,
}

/// The pins being replaced by one apply. Dropped without [`Upgrade::commit`]
/// (the apply failed), it puts the old pins back.
#[derive(Default)]
pub struct Upgrade {
    aside: Vec<Aside>,
    /// What was done, for the apply's report.
    pub notes: Vec<String>,
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        self.restore();
    }
}

fn wants(ct_max: u32) -> Vec<Want> {
    let ct_val = std::mem::size_of::<FwCtVal>() as u32;
    vec![
        Want {
            name: abi::MAP_CT,
            kind: MapType::LruHash,
            value_size: ct_val,
            max_entries: ct_max,
            carry: Carry::Conntrack,
        },
        Want {
            name: abi::MAP_CT_ASSURED,
            kind: MapType::LruHash,
            value_size: ct_val,
            max_entries: ct_max,
            carry: Carry::Conntrack,
        },
        Want {
            name: abi::MAP_STATS,
            kind: MapType::PerCpuArray,
            value_size: std::mem::size_of::<CountValue>() as u32,
            max_entries: abi::STAT_MAX,
            carry: Carry::PerCpuCounts,
        },
        Want {
            name: abi::MAP_EVSTATS,
            kind: MapType::PerCpuArray,
            value_size: 8,
            max_entries: abi::EV_MAX,
            carry: Carry::PerCpuU64,
        },
        Want {
            // Resized by a newer moat: a fresh filter, seeded from the
            // conntrack tables by the apply (never a false "absent").
            name: abi::MAP_CTSEEN,
            kind: MapType::Array,
            value_size: std::mem::size_of::<abi::FwLine>() as u32,
            max_entries: abi::CTSEEN_SLOTS / abi::LINE_SLOTS,
            carry: Carry::Nothing,
        },
        Want {
            // Tags are hints checked against the slot's key: a fresh array
            // only makes the recorded flows look like others (a flow that
            // comes back takes its slot again when the flow bucket allows).
            name: abi::MAP_FLOWTAGS,
            kind: MapType::Array,
            value_size: std::mem::size_of::<abi::FwLine>() as u32,
            max_entries: abi::FLOW_SLOTS / abi::LINE_SLOTS,
            carry: Carry::Nothing,
        },
        Want {
            name: abi::MAP_FLOWS,
            kind: MapType::Array,
            value_size: std::mem::size_of::<abi::FwFlowSlot>() as u32,
            max_entries: abi::FLOW_SLOTS,
            carry: Carry::Nothing,
        },
    ]
}

impl Upgrade {
    /// Moves aside every pin under `pins` whose shape differs from what the
    /// programs expect with conntrack tables of `ct_max` entries.
    pub fn prepare(pins: &Path, ct_max: u32) -> Result<Upgrade> {
        let mut up = Upgrade::default();
        for w in wants(ct_max) {
            let path = pins.join(w.name);
            if !path.exists() {
                continue;
            }
            let map =
                MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
            let info = map.info()?;
            let same = info.map_type().ok() == Some(w.kind)
                && info.value_size() == w.value_size
                && info.max_entries() == w.max_entries;
            if same {
                continue;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                up.restore();
                return Err(anyhow!("moving {} aside: {e}", path.display()));
            }
            up.notes.push(if w.carry == Carry::Conntrack {
                format!(
                    "{}: resized from {} to {} entries, connections carried over",
                    w.name,
                    info.max_entries(),
                    w.max_entries
                )
            } else {
                format!("{}: replaced (layout of an older moat)", w.name)
            });
            up.aside.push(Aside {
                map,
                path,
                carry: w.carry,
            });
        }
        Ok(up)
    }

    pub fn is_empty(&self) -> bool {
        self.aside.is_empty()
    }

    /// Copies what the old maps hold into the maps now pinned at their
    /// paths (the new instance's). Entries already there are kept.
    pub fn carry_over(&self) -> Result<usize> {
        let mut n = 0;
        for a in &self.aside {
            let new = MapData::from_pin(&a.path)
                .map_err(|e| anyhow!("opening {}: {e}", a.path.display()))?;
            n += carry(&a.map, new, a.carry)
                .with_context(|| format!("carrying {} over", a.path.display()))?;
        }
        Ok(n)
    }

    /// The new maps are in force: the last copy, then the old maps go.
    pub fn commit(mut self) -> Result<usize> {
        let n = self.carry_over()?;
        self.aside.clear();
        Ok(n)
    }

    /// Puts the old pins back (the apply failed).
    fn restore(&mut self) {
        for a in self.aside.drain(..) {
            let _ = std::fs::remove_file(&a.path);
            let _ = a.map.pin(&a.path);
        }
    }
}

fn carry(old: &MapData, new: MapData, how: Carry) -> Result<usize> {
    let old = Map::from_map_data(clone_fd(old)?)?;
    let new = Map::from_map_data(new)?;
    let mut n = 0;
    match how {
        Carry::Conntrack => {
            let from: BpfHashMap<_, FwCtKey, FwCtVal> = BpfHashMap::try_from(old)?;
            let mut to: BpfHashMap<_, FwCtKey, FwCtVal> = BpfHashMap::try_from(new)?;
            for (k, v) in from.iter().filter_map(Result::ok) {
                // BPF_NOEXIST: an entry the new program already made is newer.
                if to.insert(k, v, 1).is_ok() {
                    n += 1;
                }
            }
        }
        Carry::PerCpuCounts => {
            n += carry_percpu::<CountValue>(old, new, |a, b| CountValue {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
            })?
        }
        Carry::PerCpuU64 => n += carry_percpu::<u64>(old, new, |a, b| a + b)?,
        Carry::Nothing => {}
    }
    Ok(n)
}

/// Adds the old per-CPU counters to the new ones, slot by slot.
fn carry_percpu<V: aya::Pod + Default>(old: Map, new: Map, add: fn(V, V) -> V) -> Result<usize> {
    let from: PerCpuArray<_, V> = PerCpuArray::try_from(old)?;
    let mut to: PerCpuArray<_, V> = PerCpuArray::try_from(new)?;
    let slots = from.len().min(to.len());
    let ncpu = cpus()?;
    for i in 0..slots {
        let (Ok(a), Ok(b)) = (from.get(&i, 0), to.get(&i, 0)) else {
            continue;
        };
        let sum: Vec<V> = (0..ncpu).map(|c| add(a[c], b[c])).collect();
        to.set(i, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(slots as usize)
}

fn clone_fd(m: &MapData) -> Result<MapData> {
    let fd = m.fd().as_fd().try_clone_to_owned()?;
    MapData::from_fd(fd).map_err(|e| anyhow!("{e}"))
}

use std::os::fd::AsFd as _;
