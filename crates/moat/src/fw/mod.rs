//! `moat fw`: the stateful firewall's control plane.

pub mod instance;
