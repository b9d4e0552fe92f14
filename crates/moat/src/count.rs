//! `moat count`: attach the counter, print counts every interval, detach.

use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use moat_core::counters::Report;
use moat_host::{
    count::{Counter, Mode},
    loader::LogOpts,
    sys,
};

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
