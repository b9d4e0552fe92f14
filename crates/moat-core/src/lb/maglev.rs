//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//!
//! Every backend has a preference list over the table's M slots (a
//! permutation given by an offset and a skip derived from the backend's
//! identity, M prime). Backends take turns claiming their next preferred free
//! slot until the table is full; with weights, a backend of weight w claims w
//! slots per turn, so its share is w / sum(weights) up to one turn's rounding.
//! The table depends only on the set of (identity, weight): not on the order
//! backends are listed in, so re-ordering a file moves nothing.

/// A table entry that no backend holds (no backend with weight > 0).
pub const NONE: u32 = u32::MAX;

/// The default table size (prime), as Katran's.
pub const DEFAULT_TABLE: u32 = 65_537;
/// Largest table accepted (prime).
pub const MAX_TABLE: u32 = 1_000_003;

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// FNV-1a 64 over `bytes`, then a splitmix64 finalizer (FNV alone leaves the
/// low bits of similar identities close together).
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Builds the table of size `m` (prime) for backends given as (identity,
/// weight); entries are indices into `backends`, or [`NONE`] when no backend
/// has weight > 0.
pub fn build(backends: &[(Vec<u8>, u32)], m: u32) -> Vec<u32> {
    assert!(is_prime(m), "maglev table size must be prime");
    let mut table = vec![NONE; m as usize];
    // Sorted by identity: the result does not depend on the input order.
    let mut order: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].1 > 0).collect();
    if order.is_empty() {
        return table;
    }
    order.sort_by(|&a, &b| backends[a].0.cmp(&backends[b].0));
    order.dedup_by(|a, b| backends[*a].0 == backends[*b].0);
    let g = order.iter().fold(0, |g, &i| gcd(g, backends[i].1));
    let m64 = m as u64;
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let id = &backends[i].0;
            let offset = hash64(0x6d61_676c_6576_3031, id) % m64;
            let skip = hash64(0x736b_6970_7365_6564, id) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut filled = 0u32;
    'fill: loop {
        for (k, &i) in order.iter().enumerate() {
            let turns = backends[i].1 / g;
            for _ in 0..turns {
                let (offset, skip) = perm[k];
                let mut c = (offset + next[k] * skip) % m64;
                while table[c as usize] != NONE {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m64;
                }
                table[c as usize] = i as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

/// Slots held per backend index.
pub fn shares(table: &[u32], n: usize) -> Vec<usize> {
    let mut s = vec![0usize; n];
    for &e in table {
        if e != NONE {
            s[e as usize] += 1;
        }
    }
    s
}

/// The fraction of slots whose backend (by identity) differs between two
/// tables of the same size.
pub fn disruption(a: &[u32], a_ids: &[Vec<u8>], b: &[u32], b_ids: &[Vec<u8>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let id = |t: u32, ids: &[Vec<u8>]| (t != NONE).then(|| ids[t as usize].clone());
    let moved = a
        .iter()
        .zip(b)
        .filter(|(x, y)| id(**x, a_ids) != id(**y, b_ids))
        .count();
    moved as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n)
            .map(|i| (format!("10.0.{}.{}:80", i / 250, i % 250).into_bytes(), 1))
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(MAX_TABLE));
        assert!(!is_prime(65_536));
        assert!(!is_prime(1));
        assert!(is_prime(2));
    }

    #[test]
    fn equal_weights_share_evenly() {
        let b = ids(10);
        let t = build(&b, 65_537);
        assert!(t.iter().all(|&e| e != NONE));
        for s in shares(&t, 10) {
            assert!((6553..=6554).contains(&s), "share {s}");
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut b = ids(3);
        b[0].1 = 2;
        b[1].1 = 1;
        b[2].1 = 0;
        let t = build(&b, 65_537);
        let s = shares(&t, 3);
        assert_eq!(s[2], 0);
        assert!((s[0] as f64 / s[1] as f64 - 2.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn order_does_not_matter() {
        let b = ids(7);
        let mut r = b.clone();
        r.reverse();
        let (t1, t2) = (build(&b, 65_537), build(&r, 65_537));
        let ids1: Vec<Vec<u8>> = b.iter().map(|x| x.0.clone()).collect();
        let ids2: Vec<Vec<u8>> = r.iter().map(|x| x.0.clone()).collect();
        assert_eq!(disruption(&t1, &ids1, &t2, &ids2), 0.0);
    }

    #[test]
    fn nothing_eligible_is_all_none() {
        let mut b = ids(2);
        b[0].1 = 0;
        b[1].1 = 0;
        assert!(build(&b, 101).iter().all(|&e| e == NONE));
        assert!(build(&[], 101).iter().all(|&e| e == NONE));
    }

    /// Removing one of N backends moves at most 1/N + 1% of the table, for
    /// N up to 1000 at the default size (the bar).
    #[test]
    fn removal_disruption_is_bounded() {
        for n in [2usize, 3, 10, 100, 655, 1000] {
            let b = ids(n);
            let t = build(&b, 65_537);
            let all: Vec<Vec<u8>> = b.iter().map(|x| x.0.clone()).collect();
            let mut worst = 0f64;
            for gone in [0, n / 2, n - 1] {
                let rest: Vec<(Vec<u8>, u32)> = b
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .map(|(_, x)| x.clone())
                    .collect();
                let rest_ids: Vec<Vec<u8>> = rest.iter().map(|x| x.0.clone()).collect();
                let t2 = build(&rest, 65_537);
                worst = worst.max(disruption(&t, &all, &t2, &rest_ids));
            }
            let bar = 1.0 / n as f64 + 0.01;
            assert!(worst <= bar, "N={n}: {worst} > {bar}");
        }
    }
}
