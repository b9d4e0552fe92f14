//! `moat fw status` as a value: what the kernel runs (pinned links, their
//! programs' generation, every counter), with names from the state file when
//! it describes the same generation.

use anyhow::Result;

use super::{
    apply::mode_from_file,
    observe::{Counters, counters_of, running_from},
    state::{Iface, Kernel, Paths, State, StateFile, read_state_file},
};

#[derive(Clone, Debug)]
pub struct IfaceStatus {
    pub iface: Iface,
    /// Both links attached and running a program.
    pub linked: bool,
    /// Generation of the program its XDP link runs.
    pub generation: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct FwStatus {
    pub interfaces: Vec<IfaceStatus>,
    /// Generations the attached programs run (one, unless an apply is under way).
    pub generations: Vec<u32>,
    /// "ok", "missing", "damaged (...)" or "stale (...)".
    pub state_file: String,
    /// The state file, when it describes what runs.
    pub described: Option<State>,
    /// Every counter; None when nothing is attached.
    pub counters: Option<Counters>,
}

impl FwStatus {
    pub fn attached(&self) -> bool {
        self.interfaces.iter().any(|i| i.linked)
    }
    pub fn generation(&self) -> Option<u32> {
        self.generations.last().copied()
    }
}

pub fn status_at(paths: &Paths) -> Result<FwStatus> {
    let file = read_state_file(paths);
    let kernel = Kernel::read(paths, |i| mode_from_file(&file, i));
    if kernel.is_empty() {
        return Ok(FwStatus {
            interfaces: Vec::new(),
            generations: Vec::new(),
            state_file: file.describe(),
            described: None,
            counters: None,
        });
    }
    let gens = kernel.generations();
    let generation = gens.last().copied();
    let described = file
        .state()
        .filter(|s| Some(s.generation) == generation && gens.len() == 1)
        .cloned();
    let state_file = match (&file, &described) {
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
    let interfaces = kernel
        .interfaces
        .iter()
        .map(|k| IfaceStatus {
            iface: k.iface.clone(),
            linked: k.xdp.as_ref().is_some_and(|l| l.live())
                && k.tc.as_ref().is_some_and(|l| l.live()),
            generation: k.xdp.as_ref().and_then(|l| l.generation),
        })
        .collect();
    Ok(FwStatus {
        interfaces,
        generations: gens,
        state_file,
        described,
        // The kernel view and state file read above, not read again.
        counters: Some(counters_of(paths, &running_from(&kernel, file))?),
    })
}
