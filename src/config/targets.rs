//! `server.allowed_targets`: the hosts and ports pools created over the API
//! may connect to. A pool's target receives its credentials, so a caller
//! must not be able to point a pool at a server of its own.
//!
//! Entries: a host name (`db.internal`), an IP address, or a network in
//! CIDR form (`10.0.0.0/8`, `fd00::/8`), each optionally with `:PORT`
//! (IPv6 in brackets then: `[fd00::1]:5432`). A request's host matches a
//! name entry when it is that name (case-insensitive; names are not
//! resolved, so a name cannot be made to point elsewhere by DNS), and a
//! network entry when it is an IP address inside it.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The targets API-created pools may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedTargets(Vec<Target>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Name(String),
    Net(IpNet),
}

impl AllowedTargets {
    /// Parses the configured entries; each error names the entry.
    pub(crate) fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<AllowedTargets, String> {
        entries
            .into_iter()
            .map(parse_entry)
            .collect::<Result<_, _>>()
            .map(AllowedTargets)
    }

    /// Exactly these host:port pairs (the configured pools' own targets,
    /// when `allowed_targets` is not set).
    pub(crate) fn exactly<'a>(targets: impl IntoIterator<Item = (&'a str, u16)>) -> AllowedTargets {
        let mut list: Vec<Target> = Vec::new();
        for (host, port) in targets {
            let target = Target {
                host: host_pattern(host).unwrap_or_else(|_| HostPattern::Name(normal_name(host))),
                port: Some(port),
            };
            if !list.contains(&target) {
                list.push(target);
            }
        }
        AllowedTargets(list)
    }

    pub fn permits(&self, host: &str, port: u16) -> bool {
        let address = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let name = normal_name(host);
        self.0.iter().any(|target| {
            target.port.is_none_or(|p| p == port)
                && match &target.host {
                    HostPattern::Name(allowed) => *allowed == name,
                    HostPattern::Net(net) => address.is_some_and(|ip| net.contains(&ip)),
                }
        })
    }
}

impl fmt::Display for AllowedTargets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, target) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let host = match &target.host {
                HostPattern::Name(name) => name.clone(),
                HostPattern::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                    net.addr().to_string()
                }
                HostPattern::Net(net) => net.to_string(),
            };
            match (target.port, host.contains(':')) {
                (Some(port), true) => write!(f, "[{host}]:{port}")?,
                (Some(port), false) => write!(f, "{host}:{port}")?,
                (None, _) => f.write_str(&host)?,
            }
        }
        Ok(())
    }
}

fn normal_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_entry(entry: &str) -> Result<Target, String> {
    let entry = entry.trim();
    let bad = |why: &str| {
        format!("`{entry}` {why}: use a host name, an IP address or a CIDR network, optionally with :PORT (IPv6 in brackets, e.g. [fd00::1]:5432)")
    };
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("lacks its `]`"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has text after `]`"))?,
                ),
            ),
        }
    } else if entry.matches(':').count() > 1 {
        (entry, None)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(bad("has no valid port (1 to 65535)")),
        },
    };
    let host = host_pattern(host).map_err(bad)?;
    Ok(Target { host, port })
}

fn host_pattern(host: &str) -> Result<HostPattern, &'static str> {
    if let Ok(net) = host.parse::<IpNet>() {
        return Ok(HostPattern::Net(net.trunc()));
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Net(IpNet::from(address)));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if valid_name {
        Ok(HostPattern::Name(normal_name(host)))
    } else {
        Err("is not a host name, an IP address or a network")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedTargets {
        AllowedTargets::parse(entries.iter().copied()).expect("valid entries")
    }

    #[test]
    fn names_addresses_and_networks_match_with_or_without_a_port() {
        let targets = allowed(&[
            "DB.Internal",
            "10.0.0.0/8:5432",
            "192.168.1.7",
            "[fd00::1]:6432",
            "fc00::/7",
        ]);
        assert!(targets.permits("db.internal", 1));
        assert!(targets.permits("db.internal.", 5432));
        assert!(!targets.permits("db.internal.evil.com", 5432));
        assert!(targets.permits("10.20.30.40", 5432));
        assert!(!targets.permits("10.20.30.40", 5433));
        assert!(!targets.permits("11.0.0.1", 5432));
        assert!(targets.permits("192.168.1.7", 9999));
        assert!(!targets.permits("192.168.1.8", 9999));
        assert!(targets.permits("fd00::1", 6432));
        assert!(targets.permits("[fd00::1]", 6432));
        // Any port through fc00::/7.
        assert!(targets.permits("fd00::1", 5432));
        assert!(targets.permits("fd12::5", 1));
        assert!(!targets.permits("fe80::1", 1));
        // A name is never taken for an address inside a network.
        assert!(!allowed(&["127.0.0.0/8"]).permits("localhost", 5432));
    }

    #[test]
    fn bad_entries_are_named() {
        for entry in [
            "",
            "host:0",
            "host:99999",
            "[::1",
            "[::1]x",
            "bad host",
            "a/b",
        ] {
            let err = AllowedTargets::parse([entry]).expect_err(entry);
            assert!(err.contains(&format!("`{}`", entry.trim())), "{err}");
        }
    }

    #[test]
    fn exactly_lists_each_target_once_and_displays_them() {
        let targets =
            AllowedTargets::exactly([("localhost", 5432), ("localhost", 5432), ("::1", 6432)]);
        assert_eq!(targets.to_string(), "localhost:5432, [::1]:6432");
        assert!(targets.permits("LOCALHOST", 5432));
        assert!(!targets.permits("localhost", 5433));
        assert_eq!(AllowedTargets::default().to_string(), "none");
        assert!(!AllowedTargets::default().permits("localhost", 5432));
    }
}
