//! The load balancer's pure logic: the config file (YAML in, a checked
//! [`LbConfig`] out, or every error as `FILE:LINE:COL: reason`), the Maglev
//! table per service, the flow hash shared with the kernel, and the plan of
//! a change (what share of the table, and of the tracked connections, moves).
//!
//! ```yaml
//! interfaces: [eth0]
//! maglev: { table: 65537 }
//! conntrack: { max: 1000000, udp_idle: 30s }
//! services:
//!   - name: web
//!     vip: 10.200.0.10
//!     port: 80
//!     proto: tcp
//!     mode: nat
//!     hash: [src, sport]
//!     backends:
//!       - { address: 10.0.1.11, weight: 2 }
//!       - { address: 10.0.1.12, port: 8080 }
//!     health: { tcp: 80, interval: 1s, timeout: 300ms, fall: 3, rise: 2 }
//! ```

pub mod encode;
pub mod hash;
pub mod maglev;
mod parser;
pub mod plan;
#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use moat_abi::lb as abi;

pub use crate::fw::policy::{PolicyError as ConfigError, PolicyErrors as ConfigErrors};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest weight (a turn of the Maglev fill takes `weight` slots).
pub const MAX_WEIGHT: u32 = 10_000;
/// The table must hold at least this many slots per backend.
pub const SLOTS_PER_BACKEND: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nat,
    Dsr,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
        }
    }
    pub fn abi(self) -> u8 {
        match self {
            Mode::Nat => abi::MODE_NAT,
            Mode::Dsr => abi::MODE_DSR,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Tcp {
        port: u16,
    },
    Http {
        port: u16,
        path: String,
        expect: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub check: Check,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    /// `on_down: reset`: when the checks take a backend down, its tracked
    /// connections are balanced again at their next packet (TCP ones get a
    /// reset from their new backend) instead of being kept (drain).
    pub reset_on_down: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    /// The port connections go to (NAT remap); None: the VIP port of the packet.
    pub port: Option<u16>,
    pub weight: u32,
    pub line: usize,
}

impl Backend {
    /// What identifies a backend across configs (Maglev and slots).
    pub fn id(&self) -> BackendId {
        BackendId {
            addr: self.addr,
            port: self.port.unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub addr: IpAddr,
    pub port: u16,
}

impl BackendId {
    /// The bytes Maglev hashes.
    pub fn key(&self) -> Vec<u8> {
        let mut k = hash::addr_bytes(self.addr).to_vec();
        k.extend_from_slice(&self.port.to_be_bytes());
        k
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (a, 0) => write!(f, "{a}"),
            (IpAddr::V6(a), p) => write!(f, "[{a}]:{p}"),
            (a, p) => write!(f, "{a}:{p}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    /// None: every port.
    pub port: Option<u16>,
    pub proto: u8,
    pub mode: Mode,
    /// `abi::HASH_*` bits.
    pub hash: u8,
    pub backends: Vec<Backend>,
    pub health: Option<Health>,
    /// Tracked connections of a backend that is down are moved (health's
    /// `on_down: reset`); kept in the kernel as a backend flag.
    pub reset_on_down: bool,
    pub line: usize,
}

impl Service {
    pub fn proto_name(&self) -> &'static str {
        proto_name(self.proto)
    }
    /// "10.200.0.10:80/tcp", "[fd00::10]:*/udp".
    pub fn frontend(&self) -> String {
        let port = self.port.map_or("*".to_string(), |p| p.to_string());
        match self.vip {
            IpAddr::V6(a) => format!("[{a}]:{port}/{}", self.proto_name()),
            a => format!("{a}:{port}/{}", self.proto_name()),
        }
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    }
}

pub fn hash_names(bits: u8) -> Vec<&'static str> {
    HASH_FIELDS
        .iter()
        .filter(|(_, b)| bits & b != 0)
        .map(|(n, _)| *n)
        .collect()
}

pub const HASH_FIELDS: [(&str, u8); 5] = [
    ("src", abi::HASH_SRC),
    ("sport", abi::HASH_SPORT),
    ("dst", abi::HASH_DST),
    ("dport", abi::HASH_DPORT),
    ("proto", abi::HASH_PROTO),
];
pub const HASH_DEFAULT: u8 = 0x1f;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbConfig {
    pub source: PathBuf,
    pub interfaces: Vec<String>,
    pub table: u32,
    pub ct_max: u32,
    pub udp_idle_s: u64,
    pub tcp_idle_s: u64,
    pub services: Vec<Service>,
}

pub const DEFAULT_CT_MAX: u32 = 1 << 20;
pub const DEFAULT_UDP_IDLE_S: u64 = 30;
pub const DEFAULT_TCP_IDLE_S: u64 = 3600;

/// A backend's run-time state (health and operator), kept by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Drain,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Drain => "drain",
        }
    }
    pub fn abi(self) -> u8 {
        match self {
            State::Up => abi::B_UP,
            State::Down => abi::B_DOWN,
            State::Drain => abi::B_DRAIN,
        }
    }
    pub fn of_abi(v: u8) -> Option<State> {
        match v {
            abi::B_UP => Some(State::Up),
            abi::B_DOWN => Some(State::Down),
            abi::B_DRAIN => Some(State::Drain),
            _ => None,
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "up" => Some(State::Up),
            "down" => Some(State::Down),
            "drain" => Some(State::Drain),
            _ => None,
        }
    }
}

/// The Maglev table of one service: entries index `backends`; only backends
/// that are up with weight > 0 take part.
pub fn service_table(backends: &[(BackendId, u32, State)], m: u32) -> Vec<u32> {
    let input: Vec<(Vec<u8>, u32)> = backends
        .iter()
        .map(|(id, w, s)| (id.key(), if *s == State::Up { *w } else { 0 }))
        .collect();
    maglev::build(&input, m)
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<LbConfig, ConfigErrors> {
    match crate::fw::policy::read_text(path, "load balancer config", MAX_CONFIG_BYTES) {
        Ok(text) => parse(&text, path),
        Err((l, c, msg)) => Err(ConfigErrors::one(path, l, c, msg)),
    }
}

/// Checks config text (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<LbConfig, ConfigErrors> {
    let mut p = parser::Parser::new(path);
    match p.config(text) {
        Some(c) if p.total == 0 => Ok(c),
        _ => Err(ConfigErrors(std::mem::take(&mut p.errors), p.total)),
    }
}
