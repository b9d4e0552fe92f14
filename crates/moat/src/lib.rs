//! The `moat` binary's library: loader, commands, labs. The binary
//! (`main.rs`) is only the command line; the privileged tests call these
//! modules directly too.

pub mod bpfsys;
pub mod count;
pub mod demo;
pub mod fw;
pub mod http;
pub mod loader;
pub mod netlab;
pub mod sys;
pub mod traffic;
