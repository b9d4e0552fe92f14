//! The report: markdown tables, the bars the benchmark is held to, and SVG
//! line plots (drawn here, no plotting dependency).

use std::fmt::Write as _;

use crate::{
    Sample,
    live::{Filter, LiveResult},
    updates::{ApplyTime, UnderTraffic},
};

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 10] = [
    "#555555", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22",
];

/// A line plot with a log x axis (and a log y axis if `log_y`).
pub fn plot(title: &str, xlabel: &str, ylabel: &str, series: &[Series], log_y: bool) -> String {
    let (w, h, l, r, t, b) = (820.0, 440.0, 80.0, 240.0, 34.0, 50.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x.max(1.0));
        x1 = x1.max(x.max(1.0));
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1.0, 10.0, 0.0, 1.0);
    }
    let (lx0, lx1) = (x0.log10(), x1.log10().max(x0.log10() + 1.0));
    // y range: linear from 0, or log over whole decades.
    let (ly0, ly1) = if log_y {
        (y0.max(1.0).log10().floor(), y1.max(10.0).log10().ceil())
    } else {
        (0.0, y1.max(1e-9) * 1.15)
    };
    let xp = |x: f64| l + (x.max(1.0).log10() - lx0) / (lx1 - lx0) * (w - l - r);
    let yp = |y: f64| {
        let f = if log_y {
            (y.max(1.0).log10() - ly0) / (ly1 - ly0).max(1e-9)
        } else {
            y / ly1
        };
        h - b - f * (h - t - b)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{l}\" y=\"20\" font-size=\"14\">{}</text>",
        esc(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{0}\" stroke=\"black\"/>",
        h - b,
        w - r
    );
    let mut decade = lx0.floor();
    while decade <= lx1 + 1e-9 {
        let x = 10f64.powf(decade);
        if x >= x0 * 0.999 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                xp(x),
                h - b + 18.0,
                human(x)
            );
        }
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (l + w - r) / 2.0,
        h - 10.0,
        esc(xlabel)
    );
    let ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|d| 10f64.powi(d)).collect()
    } else {
        (0..=4).map(|k| ly1 * k as f64 / 4.0).collect()
    };
    for v in ticks {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n<line x1=\"{l}\" y1=\"{1:.1}\" x2=\"{}\" y2=\"{1:.1}\" stroke=\"#eee\"/>",
            l - 6.0,
            yp(v) + 4.0,
            human(v),
            w - r
        );
    }
    let mid = (t + h - b) / 2.0;
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{mid:.1}\" transform=\"rotate(-90 16 {mid:.1})\" text-anchor=\"middle\">{}</text>",
        esc(ylabel)
    );
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let p: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", xp(x), yp(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            p.join(" ")
        );
        for q in &p {
            let (x, y) = q.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{c}\"/>");
        }
        let ly = t + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{ly}\" width=\"14\" height=\"3\" fill=\"{c}\"/>\n<text x=\"{}\" y=\"{}\">{}</text>",
            w - r + 10.0,
            w - r + 30.0,
            ly + 5.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1500 → "1.5k", 2_000_000 → "2M".
pub fn human(v: f64) -> String {
    let (d, suf) = if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / d;
    if (x - x.round()).abs() < 0.05 {
        format!("{:.0}{suf}", x)
    } else {
        format!("{x:.1}{suf}")
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A table with one row per filter (in the order first seen), one column
/// per N, `cell` filling the measured cells.
fn filter_table(
    res: &[LiveResult],
    sizes: &[usize],
    rows: impl Fn(Filter) -> bool,
    cell: impl Fn(&LiveResult) -> String,
) -> String {
    let mut md = String::from("| filter |");
    for n in sizes {
        let _ = write!(md, " N={n} |");
    }
    md.push_str("\n|---|");
    for _ in sizes {
        md.push_str("---:|");
    }
    md.push('\n');
    let mut filters: Vec<Filter> = Vec::new();
    for r in res.iter().filter(|r| rows(r.filter)) {
        if !filters.contains(&r.filter) {
            filters.push(r.filter);
        }
    }
    for f in filters {
        let _ = write!(md, "| {} |", f.name());
        for &n in sizes {
            match res.iter().find(|r| r.filter == f && r.n == n) {
                Some(r) => {
                    let _ = write!(md, " {} |", cell(r));
                }
                None => md.push_str(" not run |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Live results: one row per filter, one column per N: median pps
/// (min–max) and median ratio to the same round's ceiling.
pub fn live_markdown(res: &[LiveResult], sizes: &[usize]) -> String {
    filter_table(
        res,
        sizes,
        |_| true,
        |r| {
            format!(
                "{} ({}–{}) **{:.2}x**",
                human(median(&r.pps)),
                human(min(&r.pps)),
                human(max(&r.pps)),
                median(&r.ratio)
            )
        },
    )
}

/// Install times of the live configurations, seconds.
pub fn install_markdown(res: &[LiveResult], sizes: &[usize]) -> String {
    filter_table(res, sizes, Filter::takes_rules, |r| {
        format!("{:.2} s", r.install_secs)
    })
}

/// Live plot: median pps against N, log-log, one line per filter.
pub fn live_svg(res: &[LiveResult]) -> String {
    let mut series: Vec<Series> = Vec::new();
    for r in res {
        let p = (r.n.max(1) as f64, median(&r.pps));
        match series.iter_mut().find(|s| s.name == r.filter.name()) {
            Some(s) => s.points.push(p),
            None => series.push(Series {
                name: r.filter.name().into(),
                points: vec![p],
            }),
        }
    }
    plot(
        "packets per second dropped, live traffic over veth",
        "N (rules or set entries, log scale)",
        "packets per second (log scale)",
        &series,
        true,
    )
}

/// Policy update tables.
/// The TCP-life table: connections per second, and the ratio to no filter.
pub fn life_markdown(r: &[crate::tcplife::LifeResult]) -> String {
    let base = r
        .iter()
        .find(|x| x.config == "no filter")
        .map_or(0.0, |x| x.rate);
    let mut md = String::from("| firewall | connections/s | vs no filter |\n|---|---:|---:|\n");
    for x in r {
        md.push_str(&format!(
            "| {} | {} ({}–{}) | **{:.2}x** |\n",
            x.config,
            human(x.rate),
            human(x.min),
            human(x.max),
            x.rate / base.max(1e-9)
        ));
    }
    md
}

pub fn updates_markdown(times: &[ApplyTime], traffic: Option<&UnderTraffic>) -> String {
    let mut md = String::from(
        "| blocklist entries | first apply | apply over a running firewall |\n|---:|---:|---:|\n",
    );
    for t in times {
        let _ = writeln!(
            md,
            "| {} | {:.2} s | {:.2} s |",
            t.entries, t.first, t.again
        );
    }
    if let Some(u) = traffic {
        let _ = write!(
            md,
            "\n{} applies back to back in {:.1} s under checked TCP and UDP exchanges over IPv4 and IPv6: \
             **{} messages exchanged, {} lost**.\n",
            u.applies, u.secs, u.exchanged, u.lost
        );
    }
    md
}

/// One bar from the issue, evaluated on this run.
#[derive(Clone, Debug)]
pub struct Bar {
    pub what: String,
    pub measured: String,
    /// None: this run does not have the data (sizes not measured).
    pub met: Option<bool>,
}

/// Evaluates the bars on the results at hand.
pub fn bars(cost: &[Sample], live: &[LiveResult], traffic: Option<&UnderTraffic>) -> Vec<Bar> {
    let mut out = Vec::new();
    // 1. per-packet cost at 1M within 1.3x of 1 rule (medians of interleaved rounds).
    let moat_sc: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for s in cost {
            if (s.scenario.starts_with("rules") || s.scenario.starts_with("blocklist"))
                && !v.contains(&s.scenario)
            {
                v.push(s.scenario);
            }
        }
        v
    };
    let mut worst: Option<(f64, &str)> = None;
    for sc in &moat_sc {
        let one = cost.iter().find(|s| s.scenario == *sc && s.n == 1);
        let big = cost.iter().find(|s| s.scenario == *sc && s.n == 1_000_000);
        if let (Some(a), Some(b)) = (one, big) {
            let r = b.ns / a.ns;
            if worst.is_none_or(|(w, _)| r > w) {
                worst = Some((r, sc));
            }
        }
    }
    out.push(Bar {
        what: "moat's per-packet cost at 1M rules within 1.3x of 1 rule".into(),
        measured: worst.map_or("N=1 and N=1M not both measured".into(), |(r, sc)| {
            format!("worst scenario {sc}: {r:.2}x")
        }),
        met: worst.map(|(r, _)| r <= 1.3),
    });
    // 2. live: >= 0.8x ceiling at N <= 10k and >= xdp-filter at every N both run.
    let med = |f: Filter, n: usize| {
        live.iter()
            .find(|r| r.filter == f && r.n == n)
            .map(|r| (median(&r.pps), median(&r.ratio)))
    };
    let mut ns: Vec<usize> = live.iter().map(|r| r.n).collect();
    ns.dedup();
    let moat_ratios: Vec<(usize, f64)> = ns
        .iter()
        .filter(|&&n| n <= 10_000)
        .filter_map(|&n| med(Filter::Moat, n).map(|(_, r)| (n, r)))
        .collect();
    let worst_ratio = moat_ratios
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1));
    out.push(Bar {
        what: "moat's live drop rate at every N <= 10k at least 0.8x the XDP-drop ceiling".into(),
        measured: worst_ratio.map_or("not measured".into(), |(n, r)| {
            format!("lowest: {r:.2}x at N={n}")
        }),
        met: worst_ratio.map(|(_, r)| r >= 0.8),
    });
    let vs_xf: Vec<(usize, f64)> = ns
        .iter()
        .filter_map(|&n| Some((n, med(Filter::Moat, n)?.0 / med(Filter::XdpFilter, n)?.0)))
        .collect();
    let worst_xf = vs_xf.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    out.push(Bar {
        what: "moat's live drop rate at every N both run at least xdp-filter's".into(),
        measured: worst_xf.map_or("not measured".into(), |(n, r)| {
            format!("lowest moat / xdp-filter: {r:.2}x at N={n}")
        }),
        met: worst_xf.map(|(_, r)| r >= 1.0),
    });
    for (peer, want) in [(Filter::NftSet, 3.0), (Filter::IptablesLegacy, 500.0)] {
        let r = med(Filter::Moat, 10_000)
            .zip(med(peer, 10_000))
            .map(|(m, p)| m.0 / p.0.max(1.0));
        out.push(Bar {
            what: format!("at 10k rules, at least {want}x {}", peer.name()),
            measured: r.map_or("N=10k not measured".into(), |r| format!("{r:.1}x")),
            met: r.map(|r| r >= want),
        });
    }
    out.push(Bar {
        what: "no allowed packet lost while 100 updates run under traffic".into(),
        measured: traffic.map_or("not measured".into(), |u| {
            format!(
                "{} applies, {} exchanged, {} lost",
                u.applies, u.exchanged, u.lost
            )
        }),
        met: traffic.map(|u| u.lost == 0 && u.exchanged > 0),
    });
    out
}

pub fn bars_markdown(bars: &[Bar]) -> String {
    let mut md = String::from("| bar | measured | |\n|---|---|---|\n");
    for b in bars {
        let v = match b.met {
            Some(true) => "met",
            Some(false) => "**MISSED**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {v} |", b.what, b.measured);
    }
    md
}
