//! moat's host side: everything that talks to the kernel, as values, never
//! printing. The CLI and the agent (`crates/moat`) and the benchmarks
//! (`bench/`) all build on it.
//!
//! - [`loader`]: BPF objects in, verified programs out (readable verifier errors).
//! - [`sys`]: privileges, bpffs, root-only directories, network namespaces.
//! - [`bpfsys`]: the bpf(2) link commands aya does not expose on pins.
//! - [`chain`]: the firewall and the load balancer on one interface.
//! - [`count`]: the packet counter attached to one interface.
//! - [`fw`]: the firewall: instances, state (pins, lock, generations),
//!   apply / detach / status / explain as operations, and the readers
//!   behind flows, top and metrics.
//! - [`lb`]: the load balancer: instances, apply / backend / plan / detach,
//!   status read from the pinned maps, health checks (fall/rise).
//! - [`source`]: which file each family's running generation came from.
//! - [`sec`]: runtime security: the process table and exec/exit events.
//! - [`netlab`], [`traffic`]: throwaway namespaces and bounded traffic (the
//!   demo, the tests, the benchmarks).

pub mod bpfsys;
pub mod chain;
pub mod count;
pub mod fw;
pub mod lb;
pub mod loader;
pub mod netlab;
pub mod sec;
pub mod source;
pub mod sys;
pub mod traffic;
