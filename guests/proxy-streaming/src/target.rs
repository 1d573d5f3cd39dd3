//! The `url` request headers: which of them count, and how one becomes an outgoing request.

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingRequest, Scheme};

/// Where a `url` header points.
pub struct Target {
    /// The header's value as sent (trimmed): how the answer names it.
    pub url: String,
    scheme: Scheme,
    authority: String,
    path_with_query: String,
}

/// Every `url` header of `request` that is an absolute `scheme://authority[/path][?query]`,
/// in the order sent; others are skipped, as wasmtime's program skips what its URL parser
/// rejects.
pub fn all(request: &IncomingRequest) -> Vec<Target> {
    request
        .headers()
        .get("url")
        .iter()
        .filter_map(|value| Target::parse(value))
        .collect()
}

impl Target {
    fn parse(value: &[u8]) -> Option<Target> {
        let url = std::str::from_utf8(value).ok()?.trim();
        let (scheme, rest) = url.split_once("://")?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if !scheme_ok || authority.is_empty() || authority.contains(char::is_whitespace) {
            return None;
        }
        // The fragment never leaves the client.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let path_with_query = match rest {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        };
        Some(Target {
            url: url.to_string(),
            scheme,
            authority: authority.to_string(),
            path_with_query,
        })
    }

    /// A request with `method` to this target, with no headers (as wasmtime's program sends
    /// them); `Err` names the part the host would not take.
    pub fn request(&self, method: &Method) -> Result<OutgoingRequest, String> {
        let request = OutgoingRequest::new(Fields::new());
        request
            .set_method(method)
            .map_err(|()| "the method was refused")?;
        request
            .set_scheme(Some(&self.scheme))
            .map_err(|()| "the scheme was refused")?;
        request
            .set_authority(Some(&self.authority))
            .map_err(|()| format!("the authority `{}` was refused", self.authority))?;
        request
            .set_path_with_query(Some(&self.path_with_query))
            .map_err(|()| format!("the path `{}` was refused", self.path_with_query))?;
        Ok(request)
    }
}
