//! The firewall's state: what the kernel runs (pinned links, the programs
//! they run, the generation in those programs' config) is the truth; the
//! state file in /run (policy path, rule names) is a cache that may be
//! missing, damaged or stale, and never decides anything on its own.
//!
//! Layout (pins under `MOAT_PIN_ROOT/fw`, default /sys/fs/bpf/moat/fw; state
//! under `MOAT_STATE_ROOT/fw`, default /run/moat/fw; both directories root
//! only, mode 0700, checked on every use):
//!
//! ```text
//! pins/links/NETNS@IFACE@xdp   XDP link (ingress)      pins/fw_gen   last generation handed out
//! pins/links/NETNS@IFACE@tc    TCX egress link         pins/fw_ct, fw_stats, ...  shared maps
//! pins/rule_stats              per-rule counters of the instance in force
//! state/state.json             cache: policy file, rule names, interfaces (0600)
//! ```
//!
//! Every operation that changes the firewall holds [`FwLock`] (flock on the
//! pin directory), so applies and detaches run one at a time.

use std::{
    fs,
    io::Write,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData};

/// A map pinned at `path`.
pub fn pinned_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("{}: {e}", path.display()))
}
use moat_abi::fw::{self as abi, FwConfig};
use serde::{Deserialize, Serialize};

use crate::{bpfsys, sys};

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

    /// Pins under `pin_root`/`family`, state under `state_root`/`family`
    /// (each family of programs keeps its own, e.g. "lb").
    pub fn family(pin_root: &Path, state_root: &Path, family: &str) -> Paths {
        Paths {
            pins: pin_root.join(family),
            state_dir: state_root.join(family),
        }
    }

    /// Defaults, or `MOAT_PIN_ROOT` / `MOAT_STATE_ROOT` (used by the tests to
    /// keep parallel firewalls apart).
    pub fn from_env() -> Paths {
        Self::from_env_family("fw")
    }

    /// [`Paths::from_env`] for another family.
    pub fn from_env_family(family: &str) -> Paths {
        let pin_root = std::env::var("MOAT_PIN_ROOT").unwrap_or_else(|_| "/sys/fs/bpf/moat".into());
        let state_root = std::env::var("MOAT_STATE_ROOT").unwrap_or_else(|_| "/run/moat".into());
        Paths::family(Path::new(&pin_root), Path::new(&state_root), family)
    }

    /// What these paths hold, for messages.
    pub fn what(&self) -> &'static str {
        match self.pins.file_name().and_then(|n| n.to_str()) {
            Some("lb") => "the load balancer",
            _ => "the firewall",
        }
    }
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
    pub fn links(&self) -> PathBuf {
        self.pins.join("links")
    }
    pub fn link_pin(&self, iface: &Iface, kind: &str) -> PathBuf {
        // bpffs refuses names with a dot.
        self.links().join(format!(
            "{}@{}@{kind}",
            iface.netns.as_deref().unwrap_or("host"),
            iface.name
        ))
    }
    pub fn rule_stats(&self) -> PathBuf {
        self.pins.join("rule_stats")
    }
    pub fn gen_pin(&self) -> PathBuf {
        self.pins.join(abi::MAP_GEN)
    }
    /// Does any firewall state exist (pins)?
    pub fn exists(&self) -> bool {
        self.pins.exists()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub netns: Option<String>,
    pub mode: String,
}

impl Iface {
    pub fn same_place(&self, o: &Iface) -> bool {
        self.name == o.name && self.netns == o.netns
    }
    pub fn label(&self) -> String {
        match &self.netns {
            Some(n) => format!("{} (netns {n})", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub direction: String,
    pub action: String,
    pub line: usize,
}

/// The state file's content.
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
    /// Entries and capacity (`max_entries`) of each policy map, as loaded.
    #[serde(default)]
    pub maps: Vec<MapFill>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

impl MapFill {
    /// The policy maps of an encoded policy loaded with `sizes`.
    pub fn of(
        e: &moat_core::fw::encode::Encoded,
        sizes: &moat_core::fw::encode::Sizes,
    ) -> Vec<MapFill> {
        e.map_entries()
            .into_iter()
            .map(|(name, entries)| MapFill {
                name: name.to_string(),
                entries,
                capacity: match name {
                    abi::MAP_HOST4 => sizes.host4,
                    abi::MAP_ADDR4 => sizes.addr4,
                    abi::MAP_HOST6 => sizes.host6,
                    abi::MAP_ADDR6 => sizes.addr6,
                    abi::MAP_PORTS => sizes.ports,
                    _ => sizes.verdict,
                },
            })
            .collect()
    }
}

/// What reading the state file gave.
#[derive(Clone, Debug)]
pub enum StateFile {
    Missing,
    /// Unreadable or not valid JSON: why.
    Damaged(String),
    Ok(State),
}

impl StateFile {
    pub fn state(&self) -> Option<&State> {
        match self {
            StateFile::Ok(s) => Some(s),
            _ => None,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            StateFile::Missing => "missing".into(),
            StateFile::Damaged(why) => format!("damaged ({why})"),
            StateFile::Ok(_) => "ok".into(),
        }
    }
}

pub fn read_state_file(p: &Paths) -> StateFile {
    let f = p.state_file();
    match fs::read_to_string(&f) {
        Ok(s) => match serde_json::from_str(&s) {
            Ok(st) => StateFile::Ok(st),
            Err(e) => StateFile::Damaged(format!("{}: {e}", f.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::Missing,
        Err(e) => StateFile::Damaged(format!("{}: {e}", f.display())),
    }
}

/// A state file written next to its final name and not yet in place: the
/// space it needs is taken before anything changes (a full or read-only
/// filesystem fails here, when nothing has been touched). Dropped without
/// [`StagedState::commit`], it leaves nothing behind.
pub struct StagedState {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl StagedState {
    pub fn write(p: &Paths, s: &State) -> Result<StagedState> {
        sys::private_dir(&p.state_dir)?;
        let tmp = p
            .state_dir
            .join(format!("state.json.{}.tmp", std::process::id()));
        let staged = StagedState {
            tmp: tmp.clone(),
            dest: p.state_file(),
            done: false,
        };
        let text = serde_json::to_string_pretty(s)?;
        let r = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        r.with_context(|| format!("writing the state file {}", tmp.display()))?;
        Ok(staged)
    }

    /// Puts the file in place (a rename: atomic, needs no space).
    pub fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for StagedState {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Removes the state file (and stale temporary files); best effort, says why not.
pub fn remove_state(p: &Paths) -> Option<String> {
    if !p.state_dir.exists() {
        return None;
    }
    match fs::remove_dir_all(&p.state_dir) {
        Ok(()) => {
            if let Some(parent) = p.state_dir.parent() {
                let _ = fs::remove_dir(parent); // only if empty
            }
            None
        }
        Err(e) => Some(format!("{}: {e}", p.state_dir.display())),
    }
}

/// One firewall operation at a time: an exclusive flock on the pin directory,
/// released when dropped (or when the process dies: the kernel drops it).
pub struct FwLock {
    _dir: fs::File,
}

impl FwLock {
    /// Takes the lock, waiting up to `wait` (saying so on stderr) for another
    /// moat that holds it; then refuses with a clear message.
    pub fn acquire(p: &Paths, what: &str, wait: Duration) -> Result<FwLock> {
        let t0 = Instant::now();
        let mut said = false;
        loop {
            sys::private_dir(&p.pins)?;
            let dir =
                fs::File::open(&p.pins).with_context(|| format!("opening {}", p.pins.display()))?;
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                // A detach may have removed the directory while we waited:
                // the lock must be on the directory that is there now.
                let now = fs::symlink_metadata(&p.pins);
                let held = dir.metadata()?;
                if now.is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev()) {
                    return Ok(FwLock { _dir: dir });
                }
                continue;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                bail!("locking {}: {e}", p.pins.display());
            }
            if t0.elapsed() >= wait {
                bail!(
                    "another moat is changing {} (it holds the lock on {}); {what} waited {:.0?} and gave up, nothing was changed",
                    p.what(),
                    p.pins.display(),
                    wait
                );
            }
            if !said {
                eprintln!(
                    "waiting for another moat that is changing {} (lock on {})...",
                    p.what(),
                    p.pins.display()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A pinned link as the kernel sees it.
#[derive(Clone, Debug)]
pub struct KernelLink {
    pub path: PathBuf,
    pub kind: String,
    /// None if the pin cannot be opened or is not a link.
    pub info: Option<bpfsys::LinkInfo>,
    /// Generation in the config of the program the link runs.
    pub generation: Option<u32>,
}

impl KernelLink {
    /// Attached and running a program.
    pub fn live(&self) -> bool {
        self.info.is_some_and(|i| i.ifindex != 0 && i.prog_id != 0)
    }
}

/// One interface the pins say the firewall protects.
#[derive(Clone, Debug)]
pub struct KernelIface {
    pub iface: Iface,
    pub xdp: Option<KernelLink>,
    pub tc: Option<KernelLink>,
}

/// What the kernel runs, read from the pins alone.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    pub interfaces: Vec<KernelIface>,
}

impl Kernel {
    pub fn read(p: &Paths, mode_of: impl Fn(&Iface) -> Option<String>) -> Kernel {
        let mut out: Vec<KernelIface> = Vec::new();
        let Ok(rd) = fs::read_dir(p.links()) else {
            return Kernel::default();
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let parts: Vec<&str> = n.split('@').collect();
            let [ns, name, kind] = parts[..] else {
                continue;
            };
            let mut iface = Iface {
                name: name.to_string(),
                netns: (ns != "host").then(|| ns.to_string()),
                mode: String::new(),
            };
            iface.mode = mode_of(&iface).unwrap_or_else(|| "unknown".into());
            let path = p.links().join(&n);
            let info = bpfsys::obj_get(&path)
                .ok()
                .and_then(|fd| bpfsys::link_info(fd.as_fd()).ok());
            let generation = info.and_then(|i| prog_generation(i.prog_id));
            let link = KernelLink {
                path,
                kind: kind.to_string(),
                info,
                generation,
            };
            let slot = match out.iter_mut().position(|k| k.iface.same_place(&iface)) {
                Some(i) => &mut out[i],
                None => {
                    out.push(KernelIface {
                        iface,
                        xdp: None,
                        tc: None,
                    });
                    out.last_mut().unwrap()
                }
            };
            match kind {
                "xdp" => slot.xdp = Some(link),
                "tc" => slot.tc = Some(link),
                _ => {}
            }
        }
        Kernel { interfaces: out }
    }

    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    fn links(&self) -> impl Iterator<Item = &KernelLink> {
        self.interfaces
            .iter()
            .flat_map(|k| k.xdp.iter().chain(k.tc.iter()))
    }

    /// The generations the attached programs run (usually one).
    pub fn generations(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.links().filter_map(|l| l.generation).collect();
        g.sort_unstable();
        g.dedup();
        g
    }
}

/// The generation in the fw_config map of program `prog_id`, if it is a
/// firewall program.
pub fn prog_generation(prog_id: u32) -> Option<u32> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)?;
    for id in info.map_ids().ok()??.into_iter() {
        let Ok(data) = MapData::from_id(id) else {
            continue;
        };
        let is_cfg = data
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(|n| n == abi::MAP_CONFIG))
            .unwrap_or(false);
        if !is_cfg {
            continue;
        }
        let map = Map::from_map_data(data).ok()?;
        let arr: Array<_, FwConfig> = Array::try_from(map).ok()?;
        return arr.get(&0, 0).ok().map(|c| c.generation);
    }
    None
}

/// The last generation handed out, from the kernel's pinned counter (and, if
/// an older moat left none, from what runs and what the state file says).
pub fn last_generation(p: &Paths, kernel: &Kernel, file: &StateFile) -> u32 {
    let pinned = MapData::from_pin(p.gen_pin())
        .ok()
        .and_then(|d| Map::from_map_data(d).ok())
        .and_then(|m| Array::<_, u64>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map(|g| g as u32);
    let running = kernel.generations().into_iter().max();
    let cached = file.state().map(|s| s.generation);
    [pinned, running, cached]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// Records `generation` as handed out, in the instance's (pinned) counter.
pub fn record_generation(bpf: &mut aya::Ebpf, generation: u32) -> Result<()> {
    let m = bpf
        .map_mut(abi::MAP_GEN)
        .ok_or_else(|| anyhow!("map {} missing from the fw object", abi::MAP_GEN))?;
    let mut a: Array<_, u64> = Array::try_from(m)?;
    a.set(0, u64::from(generation), 0)
        .with_context(|| format!("recording generation {generation} in {}", abi::MAP_GEN))
}

/// Detaches one pinned link at once (BPF_LINK_DETACH) and removes its pin.
pub fn detach_link(path: &Path) -> Result<()> {
    if let Ok(fd) = bpfsys::obj_get(path) {
        bpfsys::link_detach(fd.as_fd()).with_context(|| format!("detaching {}", path.display()))?;
        // Wait until the kernel says so (it does synchronously; be sure).
        let t0 = Instant::now();
        while bpfsys::link_info(fd.as_fd()).is_ok_and(|i| i.ifindex != 0) {
            if t0.elapsed() > Duration::from_secs(2) {
                bail!("{} still attached after BPF_LINK_DETACH", path.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
