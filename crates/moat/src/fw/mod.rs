//! `moat fw`: the stateful firewall's control plane.

pub mod cmd;
pub mod instance;
pub mod observe;
pub mod state;
pub mod top;
