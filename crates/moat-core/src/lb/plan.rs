//! `moat lb plan`: what a new config would move, before it is applied.
//! Tracked connections keep their backend while it exists, so the
//! connections that move are those whose backend (or service) goes away;
//! the table share that moves is what new connections would see.

use std::collections::HashMap;

use serde::Serialize;

use super::{BackendId, State, maglev, service_table};

/// One service as it runs or as a config would make it.
#[derive(Clone, Debug)]
pub struct SvcView {
    pub name: String,
    pub frontend: String,
    pub backends: Vec<(BackendId, u32, State)>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SvcPlan {
    pub service: String,
    /// added, removed, changed or unchanged
    pub change: &'static str,
    pub frontend: String,
    /// Share of new connections that would go to another backend (0..1).
    pub table_moved: f64,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub connections: u64,
    pub connections_moved: u64,
}

/// A deterministic sample of flow hashes, to compare tables of two sizes.
fn sample(n: usize) -> impl Iterator<Item = u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u32
    })
}

/// Share of flows that map to a different backend (by identity).
pub fn moved_share(
    old: &[(BackendId, u32, State)],
    m_old: u32,
    new: &[(BackendId, u32, State)],
    m_new: u32,
) -> f64 {
    let to = service_table(old, m_old);
    let tn = service_table(new, m_new);
    let id = |t: &[u32], b: &[(BackendId, u32, State)], i: usize| {
        let e = t[i];
        (e != maglev::NONE).then(|| b[e as usize].0)
    };
    if m_old == m_new {
        let moved = (0..to.len())
            .filter(|&i| id(&to, old, i) != id(&tn, new, i))
            .count();
        return moved as f64 / to.len() as f64;
    }
    const N: usize = 200_000;
    let moved = sample(N)
        .filter(|h| id(&to, old, (*h % m_old) as usize) != id(&tn, new, (*h % m_new) as usize))
        .count();
    moved as f64 / N as f64
}

/// The plan from `old` (table size `m_old`) to `new`; `conns` are today's
/// tracked connections as (service name, backend).
pub fn plan(
    old: &[SvcView],
    m_old: u32,
    new: &[SvcView],
    m_new: u32,
    conns: &[(String, BackendId)],
) -> Vec<SvcPlan> {
    let mut per: HashMap<&str, Vec<&BackendId>> = HashMap::new();
    for (s, b) in conns {
        per.entry(s.as_str()).or_default().push(b);
    }
    let mut out = Vec::new();
    for n in new {
        let o = old.iter().find(|o| o.name == n.name);
        let c = per.get(n.name.as_str()).map_or(&[][..], |v| &v[..]);
        match o {
            None => out.push(SvcPlan {
                service: n.name.clone(),
                change: "added",
                frontend: n.frontend.clone(),
                table_moved: 0.0,
                backends_added: n.backends.iter().map(|b| b.0.to_string()).collect(),
                backends_removed: vec![],
                connections: c.len() as u64,
                connections_moved: c.len() as u64,
            }),
            Some(o) => {
                let same_front = o.frontend == n.frontend;
                let added: Vec<String> = n
                    .backends
                    .iter()
                    .filter(|b| !o.backends.iter().any(|x| x.0 == b.0))
                    .map(|b| b.0.to_string())
                    .collect();
                let removed: Vec<&BackendId> = o
                    .backends
                    .iter()
                    .filter(|b| !n.backends.iter().any(|x| x.0 == b.0))
                    .map(|b| &b.0)
                    .collect();
                let moved_conns = if same_front {
                    c.iter().filter(|b| removed.contains(b)).count()
                } else {
                    c.len()
                };
                let share = if same_front {
                    moved_share(&o.backends, m_old, &n.backends, m_new)
                } else {
                    1.0
                };
                let unchanged = same_front
                    && added.is_empty()
                    && removed.is_empty()
                    && o.backends.iter().all(|b| n.backends.contains(b))
                    && m_old == m_new;
                out.push(SvcPlan {
                    service: n.name.clone(),
                    change: if unchanged { "unchanged" } else { "changed" },
                    frontend: n.frontend.clone(),
                    table_moved: share,
                    backends_added: added,
                    backends_removed: removed.iter().map(|b| b.to_string()).collect(),
                    connections: c.len() as u64,
                    connections_moved: moved_conns as u64,
                });
            }
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
        let c = per.get(o.name.as_str()).map_or(0, |v| v.len()) as u64;
        out.push(SvcPlan {
            service: o.name.clone(),
            change: "removed",
            frontend: o.frontend.clone(),
            table_moved: 1.0,
            backends_added: vec![],
            backends_removed: o.backends.iter().map(|b| b.0.to_string()).collect(),
            connections: c,
            connections_moved: c,
        });
    }
    out
}
