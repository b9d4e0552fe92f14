//! The `moat` command line: reads what the user asks, calls the operations of
//! `moat_host` (which talk to the kernel and return values) and renders the
//! results as text, JSON lines, a terminal view (`top`), Prometheus text over
//! HTTP (`metrics`) or pcap (`capture`). `main.rs` is only the argument parser.

pub mod count;
pub mod daemon;
pub mod demo;
pub mod fw;
pub mod guard;
pub mod http;
pub mod lb;
pub mod sec;
pub mod status;
