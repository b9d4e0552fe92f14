//! `moat top`: a live terminal view of the firewall (ratatui). The view is
//! a pure function of a [`TopModel`] built from two counter snapshots and
//! the flow table, so it can be rendered into a test backend.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use moat_abi::fw as abi;
use ratatui::{
    Frame, Terminal,
    crossterm::{
        event::{self, Event, KeyCode, KeyEventKind},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    layout::{Constraint, Layout},
    prelude::CrosstermBackend,
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use moat_host::{
    fw::{
        observe::{Counters, Flow, counters, flows},
        state::Paths,
    },
    sys,
};

/// What the talkers list is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Bytes,
    Packets,
}

/// Which flows the talkers list shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    All,
    Allowed,
    Denied,
}

/// Everything one screen shows.
#[derive(Clone, Debug)]
pub struct TopModel {
    pub generation: u32,
    pub interval: f64,
    /// (reason, packets/s, bytes/s, total packets), reasons with traffic.
    pub reasons: Vec<(String, f64, f64, u64)>,
    /// (rule, action, packets/s, total packets).
    pub rules: Vec<(String, String, f64, u64)>,
    /// (interface, direction, verdict, packets/s, bytes/s, total packets).
    pub ifaces: Vec<(String, &'static str, &'static str, f64, f64, u64)>,
    /// (remote, verdict, packets, bytes).
    pub talkers: Vec<(IpAddr, &'static str, u64, u64)>,
    /// (remote, packets dropped).
    pub denied: Vec<(IpAddr, u64)>,
    /// `fw_evstats` totals.
    pub events: Vec<u64>,
    pub ct: (u64, u64),
    pub paused: bool,
    pub sort: SortBy,
    pub show: Show,
}

/// Builds the model from the previous and current counters (`dt` apart).
pub fn model(
    prev: &Counters,
    cur: &Counters,
    flows: &[Flow],
    dt: f64,
    sort: SortBy,
    show: Show,
) -> TopModel {
    let dt = dt.max(1e-3);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let reasons = cur
        .reasons
        .iter()
        .enumerate()
        .filter(|(i, v)| abi::stat_is_verdict(*i as u32) && v.packets > 0)
        .map(|(i, v)| {
            let p = prev.reasons.get(i).copied().unwrap_or_default();
            (
                abi::STAT_NAMES[i].to_string(),
                rate(p.packets, v.packets),
                rate(p.bytes, v.bytes),
                v.packets,
            )
        })
        .collect();
    let rules = cur
        .rules
        .iter()
        .enumerate()
        .map(|(i, (n, _d, a, v))| {
            let p = prev.rules.get(i).map(|r| r.3.packets).unwrap_or(0);
            (
                n.clone(),
                if a.is_empty() { "-".into() } else { a.clone() },
                rate(p, v.packets),
                v.packets,
            )
        })
        .collect();
    let ifaces = cur
        .ifaces
        .iter()
        .filter(|(_, _, _, v)| v.packets > 0)
        .map(|(i, d, verdict, v)| {
            let p = prev
                .ifaces
                .iter()
                .find(|x| x.0 == *i && x.1 == *d && x.2 == *verdict)
                .map(|x| x.3)
                .unwrap_or_default();
            (
                i.clone(),
                *d,
                *verdict,
                rate(p.packets, v.packets),
                rate(p.bytes, v.bytes),
                v.packets,
            )
        })
        .collect();
    let mut talk: HashMap<(IpAddr, &'static str), (u64, u64)> = HashMap::new();
    let mut denied: HashMap<IpAddr, u64> = HashMap::new();
    for f in flows {
        if show == Show::All
            || (show == Show::Allowed && f.verdict == "allow")
            || (show == Show::Denied && f.verdict == "deny")
        {
            let t = talk.entry((f.remote, f.verdict)).or_default();
            t.0 += f.packets;
            t.1 += f.bytes;
        }
        if f.verdict == "deny" {
            *denied.entry(f.remote).or_default() += f.packets;
        }
    }
    let mut talkers: Vec<(IpAddr, &'static str, u64, u64)> = talk
        .into_iter()
        .map(|((a, v), (p, b))| (a, v, p, b))
        .collect();
    talkers.sort_by(|x, y| match sort {
        SortBy::Bytes => y.3.cmp(&x.3).then(y.2.cmp(&x.2)),
        SortBy::Packets => y.2.cmp(&x.2).then(y.3.cmp(&x.3)),
    });
    let mut denied: Vec<(IpAddr, u64)> = denied.into_iter().collect();
    denied.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let ct = cur
        .maps
        .iter()
        .find(|m| m.0 == abi::MAP_CT)
        .map_or((0, 0), |m| (m.1, m.2));
    TopModel {
        generation: cur.generation,
        interval: dt,
        reasons,
        rules,
        ifaces,
        talkers,
        denied,
        events: cur.events.clone(),
        ct,
        paused: false,
        sort,
        show,
    }
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Draws one screen (fits 80x24).
pub fn render(f: &mut Frame, m: &TopModel) {
    let area = f.area();
    let [head, top, bottom, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(50),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);
    let title = format!(
        "moat top  gen {}  {:.1}s{}  [p]ause [s]ort:{} [v]iew:{} [q]uit",
        m.generation,
        m.interval,
        if m.paused { "  PAUSED" } else { "" },
        if m.sort == SortBy::Bytes {
            "bytes"
        } else {
            "pkts"
        },
        match m.show {
            Show::All => "all",
            Show::Allowed => "allow",
            Show::Denied => "deny",
        }
    );
    f.render_widget(
        Paragraph::new(Line::from(title)).style(Style::default().add_modifier(Modifier::REVERSED)),
        head,
    );
    let [tl, tr] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let [bl, br] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    // Interfaces (by direction and verdict) first, then the reasons.
    let if_rows = m.ifaces.iter().map(|(i, d, v, pps, bps, tot)| {
        let dir = if *d == "ingress" { "in" } else { "out" };
        Row::new(vec![
            format!("{i} {dir} {v}"),
            si(*pps),
            si(*bps * 8.0),
            tot.to_string(),
        ])
    });
    let reasons = Table::new(
        if_rows.chain(m.reasons.iter().map(|(n, pps, bps, tot)| {
            Row::new(vec![n.clone(), si(*pps), si(*bps * 8.0), tot.to_string()])
        })),
        [
            Constraint::Length(16),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Min(6),
        ],
    )
    .header(Row::new(vec!["interface/reason", "pps", "bps", "total"]).style(bold))
    .block(Block::default().borders(Borders::ALL).title("traffic"));
    f.render_widget(reasons, tl);
    let rules = Table::new(
        m.rules.iter().map(|(n, a, pps, tot)| {
            Row::new(vec![n.clone(), a.clone(), si(*pps), tot.to_string()])
        }),
        [
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Min(6),
        ],
    )
    .header(Row::new(vec!["rule", "act", "pps", "hits"]).style(bold))
    .block(Block::default().borders(Borders::ALL).title("rules"));
    f.render_widget(rules, tr);
    let talkers = Table::new(
        m.talkers.iter().map(|(a, v, p, b)| {
            Row::new(vec![
                a.to_string(),
                (*v).to_string(),
                p.to_string(),
                si(*b as f64),
            ])
        }),
        [
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Min(6),
        ],
    )
    .header(Row::new(vec!["remote", "verd", "pkts", "bytes"]).style(bold))
    .block(Block::default().borders(Borders::ALL).title("top talkers"));
    f.render_widget(talkers, bl);
    let denied = Table::new(
        m.denied
            .iter()
            .map(|(a, p)| Row::new(vec![a.to_string(), p.to_string()])),
        [Constraint::Length(26), Constraint::Min(6)],
    )
    .header(Row::new(vec!["denied source", "drops"]).style(bold))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title("top denied sources"),
    );
    f.render_widget(denied, br);
    let e = |k: u32| m.events.get(k as usize).copied().unwrap_or(0);
    f.render_widget(
        Paragraph::new(format!(
            "ct {}/{}  events: {} sent, {} sampled out, {} limited, {} lost",
            m.ct.0,
            m.ct.1,
            e(abi::EV_EMITTED),
            e(abi::EV_SAMPLED_OUT),
            e(abi::EV_RATE_LIMITED),
            e(abi::EV_LOST),
        )),
        foot,
    );
}

/// `moat top`.
pub fn top_cmd(interval: Duration) -> Result<()> {
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(1) } != 1 || unsafe { libc::isatty(0) } != 1 {
        bail!(
            "moat top needs a terminal (stdin and stdout); use `moat flows --json` or `moat metrics` instead"
        );
    }
    sys::require_privileges("moat top")?;
    let paths = Paths::from_env();
    let mut prev = counters(&paths)?;
    let mut last = Instant::now();
    enable_raw_mode()?;
    execute!(std::io::stdout(), EnterAlternateScreen)?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let result = (|| -> Result<()> {
        let (mut sort, mut show, mut paused) = (SortBy::Bytes, Show::All, false);
        // The last snapshot pair, so sort/view keys redraw at once (also paused).
        let (mut before, mut now, mut fl, mut dt) =
            (prev.clone(), prev.clone(), flows(&paths)?, 1.0);
        loop {
            if !paused && last.elapsed() >= interval {
                let cur = counters(&paths)?;
                (before, now, fl, dt) = (
                    prev,
                    cur.clone(),
                    flows(&paths)?,
                    last.elapsed().as_secs_f64(),
                );
                prev = cur;
                last = Instant::now();
            }
            let mut m = model(&before, &now, &fl, dt, sort, show);
            m.paused = paused;
            term.draw(|f| render(f, &m))?;
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('p') => paused = !paused,
                    KeyCode::Char('s') => {
                        sort = if sort == SortBy::Bytes {
                            SortBy::Packets
                        } else {
                            SortBy::Bytes
                        };
                    }
                    KeyCode::Char('v') => {
                        show = match show {
                            Show::All => Show::Allowed,
                            Show::Allowed => Show::Denied,
                            Show::Denied => Show::All,
                        };
                    }
                    _ => {}
                }
            }
        }
    })();
    disable_raw_mode()?;
    execute!(std::io::stdout(), LeaveAlternateScreen)?;
    result
}
