//! Loading BPF objects and reporting what the kernel said, in user terms.

use std::{fmt, path::PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    programs::{Program, ProgramError, Xdp},
};

use crate::sys;

/// How much of the verifier's words to show, and where to write all of them.
#[derive(Clone, Debug, Default)]
pub struct LogOpts {
    /// 0: the last lines; 1: more; 2+: all of it.
    pub verbose: u8,
    /// Write the full verifier log here (after a success, too).
    pub verifier_log: Option<PathBuf>,
}

impl LogOpts {
    fn tail_lines(&self) -> usize {
        match self.verbose {
            0 => 12,
            1 => 60,
            _ => usize::MAX,
        }
    }
}

/// The kernel refused to load a program.
#[derive(Debug)]
pub struct VerifierError {
    pub program: String,
    pub errno: i32,
    pub log: String,
    pub tail: usize,
    pub log_file: Option<PathBuf>,
    /// How many times the load was tried (more than one after signals
    /// interrupted the verifier).
    pub attempts: u32,
}

impl VerifierError {
    /// The verifier's own reason: the first line after the last instruction
    /// it printed (`N: (op) ...`).
    pub fn reason(&self) -> Option<&str> {
        let lines: Vec<&str> = self.log.lines().collect();
        let is_insn = |l: &str| {
            let d = l.split(':').next().unwrap_or("");
            !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
        };
        let last = lines.iter().rposition(|l| is_insn(l))?;
        lines[last + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.starts_with(';'))
            .copied()
    }

    /// Source lines the log quotes (`; code @ file:line`), most recent last.
    pub fn source_lines(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.starts_with("; ") && l.contains(" @ "))
            .collect()
    }
}

impl fmt::Display for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the kernel rejected BPF program `{}`: {}",
            self.program,
            sys::errno_words(self.errno)
        )?;
        if self.errno == libc::EAGAIN {
            // Not a verdict on the program: the verifier stopped because a
            // signal was pending, every time it was asked.
            writeln!(
                f,
                "  signals interrupted the verifier on each of {} attempts; the program was not judged",
                self.attempts
            )?;
        }
        let lines: Vec<&str> = self.log.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            writeln!(f, "  (the verifier wrote no log)")?;
        } else {
            // An interrupted log stops wherever the signal came: no reason.
            let judged = self.errno != libc::EAGAIN;
            if let Some(reason) = self.reason().filter(|_| judged) {
                writeln!(f, "  reason: {reason}")?;
            }
            if let Some(src) = self.source_lines().last().filter(|_| judged) {
                writeln!(f, "  at source line: {}", src.trim_start_matches("; "))?;
            }
            let n = lines.len().min(self.tail);
            writeln!(
                f,
                "  last {n} of {} lines of the verifier log:",
                lines.len()
            )?;
            for l in &lines[lines.len() - n..] {
                writeln!(f, "    {l}")?;
            }
        }
        match &self.log_file {
            Some(p) => write!(f, "  full verifier log written to {}", p.display()),
            None => write!(f, "  more: -v / -vv; all of it: --verifier-log FILE"),
        }
    }
}

impl std::error::Error for VerifierError {}

/// Parses an embedded object (maps are created, programs not yet loaded).
pub fn open(object: &[u8], log: &LogOpts) -> Result<Ebpf> {
    open_with(object, log, |_| {})
}

/// Like [`open`], letting `configure` size maps or set the pin directory.
pub fn open_with<'a>(
    object: &[u8],
    log: &LogOpts,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> Result<Ebpf> {
    let level = if log.verbose > 0 || log.verifier_log.is_some() {
        VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
    } else {
        VerifierLogLevel::default()
    };
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(level);
    configure(&mut loader);
    loader
        .load(object)
        .map_err(|e| anyhow!("loading BPF object: {e}"))
}

/// What the kernel did with a loaded program.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub name: String,
    pub id: u32,
    pub insns: u32,
    pub jited_bytes: u32,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jit = if self.jited_bytes > 0 {
            format!(
                "JIT {}: {} bytes of native code",
                sys::jit_status(),
                self.jited_bytes
            )
        } else {
            format!("JIT {}: interpreted", sys::jit_status())
        };
        write!(
            f,
            "{} verified and loaded (prog id {}, {} BPF instructions, {jit})",
            self.name, self.id, self.insns
        )
    }
}

/// Loads program `name` (XDP or TC classifier) from `bpf`, turning a
/// verifier refusal into a [`VerifierError`].
pub fn load_program(bpf: &mut Ebpf, name: &str, log: &LogOpts) -> Result<Loaded> {
    load_with(bpf, name, log, |prog| match prog {
        Program::Xdp(p) => Ok(p.load()),
        Program::SchedClassifier(p) => Ok(p.load()),
        _ => Err(anyhow!("program {name}: unsupported program type")),
    })
}

/// How many times a load interrupted by a signal is tried again. The
/// verifier gives up with EAGAIN when a signal is pending (it checks in its
/// main loop), which says nothing about the program; libbpf retries the
/// same way.
pub const INTERRUPTED_RETRIES: u32 = 8;

/// Loads program `name` with `load` (which picks the program type and its
/// load arguments), turning a verifier refusal into a [`VerifierError`],
/// and returns what the kernel did. A load interrupted by a signal (EAGAIN)
/// is tried again, up to [`INTERRUPTED_RETRIES`] times.
pub fn load_with(
    bpf: &mut Ebpf,
    name: &str,
    log: &LogOpts,
    mut load: impl FnMut(&mut Program) -> Result<Result<(), ProgramError>>,
) -> Result<Loaded> {
    let prog = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is not in the object"))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match load(prog)? {
            Ok(()) => break,
            Err(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt <= INTERRUPTED_RETRIES {
                    continue;
                }
                let mut e = verifier_error(name, io_error, &verifier_log.to_string(), log)?;
                if let Some(v) = e.downcast_mut::<VerifierError>() {
                    v.attempts = attempt;
                }
                return Err(e);
            }
            Err(e) => return Err(anyhow!("loading {name}: {e}")),
        }
    }
    let info = prog
        .info()
        .with_context(|| format!("reading info of {name}"))?;
    Ok(Loaded {
        name: name.to_string(),
        id: info.id(),
        insns: info.size_translated().unwrap_or(0) / 8,
        jited_bytes: info.size_jitted(),
    })
}

/// A verifier refusal of program `name` as a [`VerifierError`] (the whole
/// log written where `log` asks).
pub fn verifier_error(
    name: &str,
    io_error: std::io::Error,
    text: &str,
    log: &LogOpts,
) -> Result<anyhow::Error> {
    let log_file = write_log(log, text)?;
    Ok(VerifierError {
        program: name.to_string(),
        errno: io_error.raw_os_error().unwrap_or(0),
        log: text.to_string(),
        tail: log.tail_lines(),
        log_file,
        attempts: 1,
    }
    .into())
}

/// Loads the XDP program `name` and returns it with what the kernel did.
pub fn load_xdp<'a>(bpf: &'a mut Ebpf, name: &str, log: &LogOpts) -> Result<(&'a mut Xdp, Loaded)> {
    let loaded = load_program(bpf, name, log)?;
    let prog: &mut Xdp = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is not in the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))?;
    Ok((prog, loaded))
}

fn write_log(log: &LogOpts, text: &str) -> Result<Option<PathBuf>> {
    match &log.verifier_log {
        Some(p) => {
            std::fs::write(p, text)
                .with_context(|| format!("writing verifier log to {}", p.display()))?;
            Ok(Some(p.clone()))
        }
        None => Ok(None),
    }
}

/// Runs `run` (a BPF_PROG_TEST_RUN) again when a signal interrupted it:
/// with `repeat` > 1 the kernel stops between repetitions when a signal is
/// pending and returns EINTR, having run an unknown number of them. For
/// timed runs (where a repetition more changes nothing) and live-frame
/// generators (whose receivers count what arrived), not for runs whose
/// side effects must happen exactly once.
pub fn test_run_retrying<T>(
    mut run: impl FnMut() -> Result<T, ProgramError>,
) -> Result<T, ProgramError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run() {
            Err(ProgramError::SyscallError(e))
                if matches!(e.io_error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
                    && attempt <= INTERRUPTED_RETRIES =>
            {
                continue;
            }
            r => return r,
        }
    }
}
