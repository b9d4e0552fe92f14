//! The load balancer, host side: [`instance`] (one loaded `lb_xdp` with its
//! VIPs and Maglev tables, over the shared pinned maps), [`apply`] (apply,
//! backend state, plan, detach as operations) and [`status`] (what runs,
//! read from the kernel).
//!
//! Pins under `MOAT_PIN_ROOT/lb` (default /sys/fs/bpf/moat/lb, root only):
//!
//! ```text
//! links/NETNS@IFACE@xdp   XDP link per interface
//! lb_backends lb_svcs     backends and services that run (the truth)
//! lb_ct lb_rev            connections (client side, backend side)
//! lb_stats lb_bstats lb_sstats            counters
//! lb_config_live          the config map of the instance in force
//! ```

pub mod apply;
pub mod health;
pub mod instance;
pub mod status;
