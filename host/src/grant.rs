//! Outbound grants: which destinations a guest may send HTTP requests to
//! (`allow-outbound = ["https://api.example.com", "http://127.0.0.1:9000", "http://*.internal:8080"]`).
//! A grant names a scheme, a host (or `*.domain` for any subdomain of it) and a port (the
//! scheme's default when left out). Pure parsing and matching, unit-tested.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// One granted destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    https: bool,
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// This host exactly (lowercase; an IP literal or a DNS name).
    Exact(String),
    /// Any subdomain of this domain (`*.internal` matches `a.internal` and `a.b.internal`, not
    /// `internal` itself).
    Subdomains(String),
}

impl FromStr for Grant {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Grant> {
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!("expected `scheme://host[:port]`, e.g. `https://api.example.com`");
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => bail!("scheme `{other}` is not `http` or `https`"),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            bail!("a grant names a destination only: no path, query or user");
        }
        let (host, port) = split_port(authority)?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Host::Subdomains(domain.to_string())
            }
            _ if host.is_empty() || host.contains('*') => {
                bail!("`{host}` is not a host; a wildcard is only allowed as `*.domain`")
            }
            _ => Host::Exact(host),
        };
        Ok(Grant { https, host, port })
    }
}

/// `host:port`, `[v6]:port`, `host` or `[v6]`.
fn split_port(authority: &str) -> Result<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            bail!("unclosed `[` in `{authority}`");
        };
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|&p| p > 0))
        .map(|p| p.ok_or_else(|| anyhow::anyhow!("`{authority}` has no valid port")))
        .transpose()?;
    Ok((host, port))
}

impl Grant {
    /// Whether a request to `host:port` over `https` (or not) is granted.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        if self.https != https || self.port != port {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            Host::Exact(exact) => host == *exact,
            Host::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            Host::Exact(host) if host.contains(':') => {
                write!(f, "{scheme}://[{host}]:{}", self.port)
            }
            Host::Exact(host) => write!(f, "{scheme}://{host}:{}", self.port),
            Host::Subdomains(domain) => write!(f, "{scheme}://*.{domain}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Grant {
        text.parse().unwrap()
    }

    #[test]
    fn exact_hosts_with_default_and_explicit_ports() {
        let api = grant("https://API.example.com");
        assert!(api.allows(true, "api.example.com", 443));
        assert!(api.allows(true, "api.example.com.", 443));
        assert!(
            !api.allows(false, "api.example.com", 443),
            "scheme must match"
        );
        assert!(
            !api.allows(true, "api.example.com", 8443),
            "port must match"
        );
        assert!(!api.allows(true, "evil.api.example.com", 443));
        let local = grant("http://127.0.0.1:9000");
        assert!(local.allows(false, "127.0.0.1", 9000));
        assert!(
            !local.allows(false, "127.0.0.1", 9090),
            "the admin port is not granted"
        );
        let v6 = grant("http://[::1]:8080");
        assert!(v6.allows(false, "[::1]", 8080));
        assert_eq!(v6.to_string(), "http://[::1]:8080");
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let internal = grant("http://*.internal:8080");
        assert!(internal.allows(false, "a.internal", 8080));
        assert!(internal.allows(false, "a.b.internal", 8080));
        assert!(!internal.allows(false, "internal", 8080));
        assert!(!internal.allows(false, "xinternal", 8080));
        assert!(!internal.allows(false, "a.internal.evil.com", 8080));
        assert_eq!(internal.to_string(), "http://*.internal:8080");
    }

    #[test]
    fn bad_grants_say_why() {
        for (text, why) in [
            ("api.example.com", "scheme://host"),
            ("ftp://x", "not `http` or `https`"),
            ("http://x/path", "no path"),
            ("http://x:0", "no valid port"),
            ("http://a*b.com", "wildcard"),
            ("http://*.", "wildcard"),
        ] {
            let err = text.parse::<Grant>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
