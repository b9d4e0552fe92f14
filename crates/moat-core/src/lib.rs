//! moat's pure logic. Nothing here needs privileges or a kernel: it is tested
//! anywhere with `cargo test -p moat-core`.
//!
//! * [`packet`]: a small builder for Ethernet/VLAN/IPv4/IPv6/TCP/UDP/ICMP/ARP
//!   frames, used by the BPF_PROG_TEST_RUN fixtures, the netns tests and the demo.
//! * [`classify`]: the reference model of the counter's classification, written
//!   independently of the C parser; the two are compared on random frames.
//! * [`counters`]: per-CPU sums, interval deltas, rates, the table and JSON lines
//!   that `moat count` prints.

pub mod classify;
pub mod counters;
pub mod fw;
pub mod lb;
pub mod packet;
pub mod sec;
pub mod yaml;
