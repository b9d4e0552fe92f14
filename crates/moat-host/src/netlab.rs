//! Throwaway labs: two network namespaces joined by a veth pair. Used by
//! `moat demo` and by the privileged tests. Never touches the host's own
//! interfaces; dropping a [`Lab`] deletes both namespaces (and with them the
//! veth pair and anything attached to it).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Addresses of the two ends (when the lab has addresses).
pub const A4: &str = "10.199.0.1";
pub const B4: &str = "10.199.0.2";
pub const A6: &str = "fd00:199::1";
pub const B6: &str = "fd00:199::2";

/// How to set a lab up.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Give the ends IPv4/IPv6 addresses (A4/A6 on a, B4/B6 on b).
    pub addresses: bool,
    /// Disable IPv6 in both namespaces (no NDP/MLD chatter), for exact counts.
    pub ipv6: bool,
    /// Enable GRO on the b end (needed to receive XDP-redirected frames).
    pub gro: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            addresses: true,
            ipv6: true,
            gro: false,
        }
    }
}

/// Two namespaces `ns_a`, `ns_b`; veth `if_a` in a, `if_b` in b.
#[derive(Debug)]
pub struct Lab {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ip(&[
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo {value} > {path}"),
    ])
    .map(|_| ())
}

impl Lab {
    /// Creates `moat-TAG-a` and `moat-TAG-b` joined by veth `mTAGa`/`mTAGb`.
    /// `tag` must be at most 12 characters of [a-z0-9].
    pub fn create(tag: &str, cfg: &LabConfig) -> Result<Lab> {
        if tag.is_empty() || tag.len() > 12 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("lab tag {tag:?} must be 1-12 letters or digits");
        }
        let mut lab = Lab {
            ns_a: format!("moat-{tag}-a"),
            ns_b: format!("moat-{tag}-b"),
            if_a: format!("m{tag}a"),
            if_b: format!("m{tag}b"),
            mac_a: [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x0a],
            mac_b: [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x0b],
        };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &lab.ns_a])?;
        if let Err(e) = ip(&["netns", "add", &lab.ns_b]) {
            // ns_b may be taken by someone else: do not delete it in Drop.
            let _ = ip(&["netns", "del", &lab.ns_a]);
            lab.ns_a.clear();
            lab.ns_b.clear();
            return Err(e);
        }
        lab.setup(cfg)?;
        if cfg.addresses {
            lab.wait_ready(cfg.ipv6)?;
        }
        Ok(lab)
    }

    /// Waits until a→b works end to end: a TCP connect to a closed port on b
    /// gets its refusal (the first seconds after link-up, neighbour
    /// resolution can stall). At most 5 s.
    fn wait_ready(&self, ipv6: bool) -> Result<()> {
        let _ns = crate::sys::NetnsGuard::enter(&self.ns_a)?;
        let mut targets = vec![B4];
        if ipv6 {
            targets.push(B6);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for t in targets {
            let addr = std::net::SocketAddr::new(t.parse()?, 9);
            loop {
                match std::net::TcpStream::connect_timeout(
                    &addr,
                    std::time::Duration::from_millis(200),
                ) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        bail!("lab link {} -> {t} not ready after 5s: {e}", self.if_a)
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    fn setup(&mut self, cfg: &LabConfig) -> Result<()> {
        for ns in [&self.ns_a, &self.ns_b] {
            let v = if cfg.ipv6 { "0" } else { "1" };
            sysctl_in(ns, "net.ipv6.conf.all.disable_ipv6", v)?;
            sysctl_in(ns, "net.ipv6.conf.default.disable_ipv6", v)?;
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let (mac_a, mac_b) = (mac(self.mac_a), mac(self.mac_b));
        ip(&[
            "link", "add", &self.if_a, "netns", &self.ns_a, "address", &mac_a, "type", "veth",
            "peer", "name", &self.if_b, "netns", &self.ns_b, "address", &mac_b,
        ])?;
        if cfg.addresses {
            let mut addrs = vec![
                (&self.ns_a, &self.if_a, format!("{A4}/24")),
                (&self.ns_b, &self.if_b, format!("{B4}/24")),
            ];
            if cfg.ipv6 {
                addrs.push((&self.ns_a, &self.if_a, format!("{A6}/64")));
                addrs.push((&self.ns_b, &self.if_b, format!("{B6}/64")));
            }
            for (ns, dev, addr) in addrs {
                // nodad: the address is usable at once (IPv4 ignores the flag).
                ip(&["-n", ns, "addr", "add", &addr, "dev", dev, "nodad"])?;
            }
        }
        if cfg.gro {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &self.ns_b, "ethtool", "-K", &self.if_b, "gro", "on",
                ])
                .output();
        }
        for (ns, dev) in [(&self.ns_a, &self.if_a), (&self.ns_b, &self.if_b)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Does interface `if_b` currently have an XDP program?
    pub fn b_has_xdp(&self) -> Result<bool> {
        let out = ip(&["-n", &self.ns_b, "-d", "link", "show", "dev", &self.if_b])?;
        Ok(out.contains("prog/xdp"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// Deletes `moat-demo<PID>-{a,b}` namespaces left by demo runs that died
/// without cleaning up (killed with SIGKILL); live runs are left alone.
pub fn reap_stale_demos() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("moat-demo") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(pid) = pid.parse::<u32>()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
