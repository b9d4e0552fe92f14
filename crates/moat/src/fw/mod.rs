//! `moat fw` and the firewall's views (flows, metrics, capture, top): command
//! line and rendering; the operations and readers are in `moat_host::fw`.

pub mod cmd;
pub mod observe;
pub mod top;
