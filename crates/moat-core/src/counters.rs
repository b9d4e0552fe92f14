//! Counter arithmetic for `moat count`: per-CPU sums, interval deltas, rates,
//! and the two output forms (a table for people, JSON lines for programs).

use moat_abi::count::{CLASS_MAX, CLASS_NAMES, CountValue};
use serde_json::{Map, Value, json};

/// One counter per class, already summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [CountValue; CLASS_MAX as usize]);

impl Counts {
    /// Sums per-CPU values: `per_class[c]` holds one value per CPU.
    pub fn from_percpu<I, C>(per_class: I) -> Counts
    where
        I: IntoIterator<Item = C>,
        C: IntoIterator<Item = CountValue>,
    {
        let mut out = Counts::default();
        for (slot, cpus) in out.0.iter_mut().zip(per_class) {
            for v in cpus {
                slot.packets = slot.packets.wrapping_add(v.packets);
                slot.bytes = slot.bytes.wrapping_add(v.bytes);
            }
        }
        out
    }

    /// `self - earlier`, class by class (counters only grow).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut out = Counts::default();
        for ((o, a), b) in out.0.iter_mut().zip(&self.0).zip(&earlier.0) {
            o.packets = a.packets.wrapping_sub(b.packets);
            o.bytes = a.bytes.wrapping_sub(b.bytes);
        }
        out
    }

    pub fn total(&self) -> CountValue {
        self.0
            .iter()
            .fold(CountValue::default(), |acc, v| CountValue {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            })
    }
}

/// Counts over a span of time, with the rates they imply.
#[derive(Clone, Debug)]
pub struct Report {
    pub interface: String,
    /// Seconds since the counter was attached.
    pub elapsed: f64,
    /// Seconds this report covers (== elapsed for the final report).
    pub span: f64,
    pub counts: Counts,
    /// Totals since start instead of one interval.
    pub final_: bool,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Report {
    /// One JSON object (a line of `moat count --json`).
    pub fn to_json(&self) -> Value {
        let entry = |v: &CountValue| {
            json!({
                "packets": v.packets,
                "bytes": v.bytes,
                "pps": round2(rate(v.packets, self.span)),
                "bps": round2(rate(v.bytes * 8, self.span)),
            })
        };
        let mut classes = Map::new();
        for (name, v) in CLASS_NAMES.iter().zip(&self.counts.0) {
            classes.insert((*name).to_string(), entry(v));
        }
        json!({
            "interface": self.interface,
            "elapsed_s": round2(self.elapsed),
            "span_s": round2(self.span),
            "final": self.final_,
            "classes": classes,
            "total": entry(&self.counts.total()),
        })
    }

    /// A table for people; classes with no packets are shown too, dimmed to '-'.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let what = if self.final_ {
            format!("total since start ({:.1}s)", self.elapsed)
        } else {
            format!("last {:.1}s (at {:.1}s)", self.span, self.elapsed)
        };
        s.push_str(&format!("{}: {}\n", self.interface, what));
        s.push_str(&format!(
            "  {:<11} {:>12} {:>12} {:>12} {:>14}\n",
            "class", "packets", "bytes", "pps", "bps"
        ));
        let line = |name: &str, v: &CountValue| {
            if v.packets == 0 {
                format!(
                    "  {:<11} {:>12} {:>12} {:>12} {:>14}\n",
                    name, "-", "-", "-", "-"
                )
            } else {
                format!(
                    "  {:<11} {:>12} {:>12} {:>12} {:>14}\n",
                    name,
                    v.packets,
                    human(v.bytes as f64, "B"),
                    human(rate(v.packets, self.span), ""),
                    human(rate(v.bytes * 8, self.span), "bit/s"),
                )
            }
        };
        for (name, v) in CLASS_NAMES.iter().zip(&self.counts.0) {
            s.push_str(&line(name, v));
        }
        s.push_str(&line("total", &self.counts.total()));
        s
    }
}

/// `1234567.0` -> `1.23M` (SI prefixes), with a unit suffix.
pub fn human(x: f64, unit: &str) -> String {
    let (v, p) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        return if x.fract() == 0.0 {
            format!("{x:.0}{unit}")
        } else {
            format!("{x:.1}{unit}")
        };
    };
    format!("{v:.2}{p}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(packets: u64, bytes: u64) -> CountValue {
        CountValue { packets, bytes }
    }

    #[test]
    fn percpu_values_are_summed_per_class() {
        let mut per_class: Vec<Vec<CountValue>> = vec![vec![cv(0, 0); 2]; CLASS_MAX as usize];
        per_class[0] = vec![cv(1, 60), cv(2, 120)];
        per_class[9] = vec![cv(5, 5), cv(0, 0)];
        let c = Counts::from_percpu(per_class);
        assert_eq!(c.0[0], cv(3, 180));
        assert_eq!(c.0[9], cv(5, 5));
        assert_eq!(c.total(), cv(8, 185));
    }

    #[test]
    fn rates_follow_the_span() {
        let mut now = Counts::default();
        now.0[1] = cv(30, 3000);
        let mut then = Counts::default();
        then.0[1] = cv(10, 1000);
        let r = Report {
            interface: "x".into(),
            elapsed: 4.0,
            span: 2.0,
            counts: now.since(&then),
            final_: false,
        };
        let j = r.to_json();
        assert_eq!(j["classes"]["ipv4_udp"]["packets"], 20);
        assert_eq!(j["classes"]["ipv4_udp"]["pps"], 10.0);
        assert_eq!(j["classes"]["ipv4_udp"]["bps"], 8000.0);
        assert_eq!(j["total"]["bytes"], 2000);
        assert!(r.to_table().contains("ipv4_udp"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0, "B"), "999B");
        assert_eq!(human(1500.0, "B"), "1.50kB");
        assert_eq!(human(2.5e6, "bit/s"), "2.50Mbit/s");
    }
}
