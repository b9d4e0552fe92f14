//! A packet as the user describes it on the command line (`moat fw explain`):
//! `tcp A:P -> B:P`, `udp [A6]:P -> [B6]:P`, `icmp A -> B [TYPE [CODE]]`.

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};

use super::policy;

/// A packet described on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    /// tcp/udp destination port, or icmp type << 8 | code.
    pub port: u16,
}

fn parse_endpoint(s: &str, with_port: bool) -> Result<(IpAddr, u16)> {
    if !with_port {
        return Ok((
            s.parse()
                .map_err(|_| anyhow!("{s:?} is not an IP address"))?,
            0,
        ));
    }
    let (a, p) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("{s:?}: write IPv6 endpoints as [ADDR]:PORT"))?;
        (a, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| anyhow!("{s:?}: expected ADDR:PORT"))?
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| anyhow!("{a:?} is not an IP address"))?;
    let port: u16 = p
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("{p:?} is not a port (1-65535)"))?;
    Ok((ip, port))
}

/// Parses `tcp A:P -> B:P`, `udp ...`, `icmp A -> B [TYPE [CODE]]`, `icmpv6 ...`.
pub fn parse_flow(s: &str) -> Result<FlowSpec> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let usage = "expected e.g. \"tcp 198.51.100.7:40000 -> 10.0.0.1:22\", \"udp [2001:db8::1]:5353 -> [2001:db8::2]:53\" or \"icmp 192.0.2.1 -> 10.0.0.1 echo-request\"";
    if words.len() < 4 || words[2] != "->" {
        bail!("cannot read packet {s:?}: {usage}");
    }
    let proto = match words[0] {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        p => p
            .parse::<u8>()
            .map_err(|_| anyhow!("unknown protocol {p:?}: {usage}"))?,
    };
    let ports = proto == 6 || proto == 17;
    let (src, sport) = parse_endpoint(words[1], ports)?;
    let (dst, dport) = parse_endpoint(words[3], ports)?;
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("{src} and {dst} are of different address families");
    }
    let port = if ports {
        if words.len() > 4 {
            bail!("unexpected {:?} after the destination: {usage}", words[4]);
        }
        dport
    } else if proto == 1 || proto == 58 {
        let ty = match words.get(4) {
            None => {
                if proto == 1 {
                    8
                } else {
                    128
                }
            }
            Some(t) => match t.parse::<u8>() {
                Ok(n) => n,
                Err(_) => policy::ICMP_NAMES
                    .iter()
                    .find(|(n, _, _)| n == t)
                    .and_then(|(_, v4, v6)| if proto == 1 { *v4 } else { *v6 })
                    .ok_or_else(|| anyhow!("unknown ICMP type {t:?} for {}", words[0]))?,
            },
        };
        let code: u8 = match words.get(5) {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| anyhow!("{c:?} is not an ICMP code (0-255)"))?,
        };
        (u16::from(ty) << 8) | u16::from(code)
    } else {
        0
    };
    Ok(FlowSpec {
        proto,
        src,
        sport: if ports { sport } else { 0x4d4f },
        dst,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_specs() {
        let f = parse_flow("tcp 198.51.100.7:40000 -> 10.0.0.1:22").unwrap();
        assert_eq!((f.proto, f.sport, f.port), (6, 40000, 22));
        let f = parse_flow("udp [2001:db8::1]:5353 -> [2001:db8::2]:53").unwrap();
        assert_eq!((f.proto, f.port), (17, 53));
        let f = parse_flow("icmp 192.0.2.1 -> 10.0.0.1 echo-request").unwrap();
        assert_eq!(f.port, 8 << 8);
        let f = parse_flow("icmpv6 2001:db8::1 -> 2001:db8::2 destination-unreachable 4").unwrap();
        assert_eq!(f.port, (1 << 8) | 4);
        assert!(parse_flow("tcp 1.2.3.4 -> 5.6.7.8:22").is_err());
        assert!(parse_flow("tcp 1.2.3.4:1 -> ::1:22").is_err());
        assert!(parse_flow("gre 1.2.3.4 -> 5.6.7.8").is_err());
        assert_eq!(parse_flow("47 1.2.3.4 -> 5.6.7.8").unwrap().proto, 47);
    }
}
