//! The firewall, host side. Data flows one way: the operations (apply,
//! detach, status, explain) use [`instance`] (one loaded program pair with
//! its maps filled from `moat_core::fw::encode`) and [`state`] (pins, lock,
//! generations, the kernel's view, the state file); [`observe`] reads the
//! pinned maps for flows, events and counters.

pub mod apply;
pub mod detach;
pub mod explain;
pub mod instance;
pub mod observe;
pub mod pins;
pub mod state;
pub mod status;
