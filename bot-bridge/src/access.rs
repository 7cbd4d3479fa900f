//! Who may do what, in one place:
//!
//! - [`Operators`]: the Discord members who may type into an agent (`/input`).
//!   Discord's own gates (the commands' `default_member_permissions`, the run
//!   channel's USE_APPLICATION_COMMANDS overwrite) hide the command from
//!   everyone else, but a guild admin can re-open them; this check is the one
//!   bot-bridge enforces itself on every signed interaction.
//! - [`Caller`]: who is calling the runs API for a given run. The bearer
//!   `API_TOKEN` only says "a watcher of this deployment"; a run's secrets go
//!   only to the caller that created it, proven by the run token it got (or
//!   proposed) at creation, or by the pod it is bound to (`Caller::Pod`, a
//!   TokenReview of the pod's projected ServiceAccount token: see `auth`).
//! - [`InputUrlPolicy`]: where bot-bridge may send operator input, so a caller
//!   cannot point the HMAC-signed relay at a metadata endpoint or a loopback
//!   admin port.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ops::Secret;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Header a watcher presents its run token in (creation, re-provisioning,
/// completion).
pub const RUN_TOKEN_HEADER: &str = protocol::headers::RUN_TOKEN;
/// Shortest run token a caller may propose (hex of 16 random bytes).
pub const MIN_RUN_TOKEN: usize = 32;
/// Longest run token a caller may propose.
pub const MAX_RUN_TOKEN: usize = 256;
/// The default of `INPUT_URL_ALLOW`: private and CGNAT ranges, where pod IPs
/// live; loopback and link-local (cloud metadata) are not in it.
pub const DEFAULT_INPUT_URL_ALLOW: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7";

/// The Discord members allowed to send `/input` (`OPERATOR_ROLE_IDS`,
/// `OPERATOR_USER_IDS`). Both empty means nobody: input is refused until an
/// operator list is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Operators {
    pub role_ids: BTreeSet<String>,
    pub user_ids: BTreeSet<String>,
}

/// Whether an interaction's member may send input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One of the member's roles or its user id is listed.
    Allowed,
    /// The member is not an operator.
    Forbidden,
    /// No operator is configured: everyone is refused.
    NotConfigured,
}

impl Operators {
    pub fn is_configured(&self) -> bool {
        !self.role_ids.is_empty() || !self.user_ids.is_empty()
    }

    /// Checks the invoking member of an interaction: `member.user.id` and
    /// `member.roles` in a guild, `user.id` in a DM (no roles there).
    pub fn check(&self, interaction: &Value) -> Verdict {
        if !self.is_configured() {
            return Verdict::NotConfigured;
        }
        let member = interaction.get("member");
        let user_id = member
            .and_then(|m| m.get("user"))
            .or_else(|| interaction.get("user"))
            .and_then(|u| u.get("id"))
            .and_then(Value::as_str);
        if user_id.is_some_and(|id| self.user_ids.contains(id)) {
            return Verdict::Allowed;
        }
        let has_role = member
            .and_then(|m| m.get("roles"))
            .and_then(Value::as_array)
            .is_some_and(|roles| {
                roles
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|r| self.role_ids.contains(r))
            });
        if has_role {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        }
    }
}

/// Who is calling the runs API for one run. The bearer was checked before
/// (`API_TOKEN`, or a pod token through TokenReview: see `auth`); this says
/// whether the caller is the run's owner.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Presented `X-Agentmon-Run-Token`.
    RunToken(Secret<String>),
    /// Presented nothing beyond the API token.
    Anonymous,
    /// Presented its pod's projected ServiceAccount token instead of the API
    /// token; the TokenReview named this pod. It owns the runs bound to it
    /// (`IdentitySource::Verified`) and nothing else.
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// What the bearer of a runs API request proved (set by the auth layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer {
    /// `API_TOKEN`: operators, tools, watchers outside Kubernetes.
    ApiToken,
    /// A reviewed pod token.
    Pod(crate::store::PodIdentity),
}

impl Caller {
    /// The caller of a request: a pod token names the pod (a run token header
    /// beside it is ignored); behind `API_TOKEN`, the run token decides.
    pub fn of(bearer: &Bearer, headers: &http::HeaderMap) -> Self {
        match bearer {
            Bearer::ApiToken => Self::from_headers(headers),
            Bearer::Pod(p) => Self::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            },
        }
    }

    /// The pod of a `Pod` caller.
    pub fn pod(&self) -> Option<crate::store::PodIdentity> {
        match self {
            Self::Pod {
                namespace,
                name,
                uid,
            } => Some(crate::store::PodIdentity {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
            }),
            _ => None,
        }
    }

    /// Reads the caller's identity from request headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        match headers
            .get(RUN_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(t) => Self::RunToken(Secret::new(t.to_owned())),
            None => Self::Anonymous,
        }
    }

    /// Whether this caller owns the run whose token hash is `token_hash`.
    pub fn owns(&self, token_hash: &str) -> bool {
        match self {
            Self::RunToken(t) => {
                let presented = hash_token(t);
                bool::from(presented.as_bytes().ct_eq(token_hash.as_bytes()))
            }
            // A pod owns runs by their bound pod, not by token (see
            // `AppState::authorize`).
            Self::Anonymous | Self::Pod { .. } => false,
        }
    }

    /// A token the caller proposes for a run it creates, if acceptable.
    pub fn proposed_token(&self) -> Result<Option<Secret<String>>, String> {
        match self {
            Self::RunToken(t) => {
                let s = t.expose();
                if s.len() < MIN_RUN_TOKEN
                    || s.len() > MAX_RUN_TOKEN
                    || !s.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(format!(
                        "{RUN_TOKEN_HEADER} must be {MIN_RUN_TOKEN} to {MAX_RUN_TOKEN} \
                         printable ASCII characters"
                    ));
                }
                Ok(Some(t.clone()))
            }
            Self::Anonymous | Self::Pod { .. } => Ok(None),
        }
    }
}

/// The stored form of a run token: hex SHA-256. A leaked database gives no
/// token (tokens are 256-bit random, so no salt or slow hash is needed).
pub fn hash_token(token: &Secret<String>) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

/// One entry of `INPUT_URL_ALLOW`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// An address range, e.g. `10.0.0.0/8` or `127.0.0.1/32`.
    Net { addr: IpAddr, prefix: u8 },
    /// Exactly this host name, e.g. `watcher`.
    Name(String),
    /// Any name under this suffix, written `*.svc.cluster.local`.
    Suffix(String),
}

impl HostRule {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.is_empty() || !valid_name(suffix) {
                return Err(format!(
                    "{s:?} is not a host name pattern like *.svc.cluster.local"
                ));
            }
            return Ok(Self::Suffix(format!(".{suffix}")));
        }
        if let Some((a, p)) = s.split_once('/') {
            let addr: IpAddr = a
                .parse()
                .map_err(|_| format!("{s:?} is not a CIDR like 10.0.0.0/8"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length (0 to {max})"))?;
            return Ok(Self::Net { addr, prefix });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Net { addr, prefix });
        }
        if s.is_empty() || !valid_name(&s) {
            return Err(format!("{s:?} is not a CIDR, an address or a host name"));
        }
        Ok(Self::Name(s))
    }

    fn matches(&self, host: &url::Host<&str>) -> bool {
        match (self, host) {
            (Self::Net { addr, prefix }, url::Host::Ipv4(ip)) => {
                in_net(&IpAddr::V4(*ip), addr, *prefix)
            }
            (Self::Net { addr, prefix }, url::Host::Ipv6(ip)) => {
                in_net(&IpAddr::V6(*ip), addr, *prefix)
            }
            (Self::Name(n), url::Host::Domain(d)) => d.eq_ignore_ascii_case(n),
            (Self::Suffix(sfx), url::Host::Domain(d)) => {
                d.to_ascii_lowercase().ends_with(sfx.as_str())
            }
            _ => false,
        }
    }
}

fn valid_name(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

fn in_net(ip: &IpAddr, net: &IpAddr, prefix: u8) -> bool {
    fn bits(ip: &IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(*v)), 32),
            IpAddr::V6(v) => (u128::from(*v), 128),
        }
    }
    let (a, width) = bits(ip);
    let (b, net_width) = bits(net);
    if width != net_width {
        return false;
    }
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix.min(width);
    (a >> shift) == (b >> shift)
}

/// Where operator input may be relayed (`INPUT_URL_ALLOW`). An `input_url` is
/// `http(s)://host[:port]` with nothing else: no credentials, path, query or
/// fragment (bot-bridge appends `/v1/input` itself), and a host the list
/// allows. Host names are matched as written; the operator who lists one
/// trusts its DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputUrlPolicy {
    rules: Vec<HostRule>,
}

impl Default for InputUrlPolicy {
    fn default() -> Self {
        // The built-in default parses; an empty policy (allow nothing) is the
        // fallback that can never widen access.
        Self::parse(DEFAULT_INPUT_URL_ALLOW).unwrap_or(Self { rules: Vec::new() })
    }
}

impl InputUrlPolicy {
    /// Parses a comma-separated list of CIDRs, addresses, host names and
    /// `*.suffix` patterns.
    pub fn parse(list: &str) -> Result<Self, String> {
        let rules = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(HostRule::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// Checks a caller's `input_url` and returns its normalised form
    /// (`scheme://host[:port]`), or why it is refused.
    pub fn check(&self, raw: &str) -> Result<String, String> {
        let url = url::Url::parse(raw.trim())
            .map_err(|_| "input_url must be an absolute http(s) URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("input_url must use http or https".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("input_url must not carry credentials".into());
        }
        if url.query().is_some() {
            return Err("input_url must not have a query".into());
        }
        if url.fragment().is_some() {
            return Err("input_url must not have a fragment".into());
        }
        if !matches!(url.path(), "" | "/") {
            return Err(
                "input_url must have no path (bot-bridge calls {input_url}/v1/input)".into(),
            );
        }
        let Some(host) = url.host() else {
            return Err("input_url needs a host".into());
        };
        if !self.rules.iter().any(|r| r.matches(&host)) {
            return Err(format!(
                "input_url host {host} is not allowed by INPUT_URL_ALLOW \
                 (link-local, metadata and loopback addresses are refused unless listed)"
            ));
        }
        let mut out = format!("{}://{host}", url.scheme());
        if let Some(port) = url.port() {
            out.push_str(&format!(":{port}"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ops(roles: &[&str], users: &[&str]) -> Operators {
        Operators {
            role_ids: roles.iter().map(|s| (*s).to_owned()).collect(),
            user_ids: users.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn operators_are_matched_by_role_or_user_id() {
        let o = ops(&["10"], &["20"]);
        let member =
            |id: &str, roles: &[&str]| json!({"member": {"user": {"id": id}, "roles": roles}});
        assert_eq!(o.check(&member("1", &["10"])), Verdict::Allowed);
        assert_eq!(o.check(&member("20", &[])), Verdict::Allowed);
        assert_eq!(o.check(&member("1", &["11", "12"])), Verdict::Forbidden);
        assert_eq!(o.check(&json!({"user": {"id": "20"}})), Verdict::Allowed);
        assert_eq!(o.check(&json!({"user": {"id": "21"}})), Verdict::Forbidden);
        // A role list in a DM body (where no member exists) grants nothing.
        assert_eq!(o.check(&json!({"roles": ["10"]})), Verdict::Forbidden);
        assert_eq!(
            Operators::default().check(&member("20", &["10"])),
            Verdict::NotConfigured
        );
    }

    #[test]
    fn run_tokens_are_compared_by_hash() {
        let t = Secret::new("a".repeat(40));
        let h = hash_token(&t);
        assert_eq!(h.len(), 64);
        assert!(Caller::RunToken(t).owns(&h));
        assert!(!Caller::RunToken(Secret::new("b".repeat(40))).owns(&h));
        assert!(!Caller::Anonymous.owns(&h));
        let pod = Caller::Pod {
            namespace: "agents".into(),
            name: "a".into(),
            uid: "u".into(),
        };
        assert!(!pod.owns(&h), "a pod never owns a run by token");
        assert!(matches!(pod.proposed_token(), Ok(None)));
        assert!(Caller::RunToken(Secret::new("short".into()))
            .proposed_token()
            .is_err());
        let shown = format!(
            "{:?}",
            Caller::RunToken(Secret::new("tok-secret-xyz".into()))
        );
        assert!(!shown.contains("tok-secret-xyz"), "{shown}");
    }

    #[test]
    fn input_urls_are_restricted() {
        let p = InputUrlPolicy::default();
        assert_eq!(
            p.check("http://10.1.2.3:8081").unwrap(),
            "http://10.1.2.3:8081"
        );
        assert_eq!(p.check("https://10.1.2.3/").unwrap(), "https://10.1.2.3");
        assert_eq!(
            p.check("http://[fd00::1]:8081").unwrap(),
            "http://[fd00::1]:8081"
        );
        let refused = [
            ("http://169.254.169.254", "not allowed"),
            ("http://127.0.0.1:47777", "not allowed"),
            ("http://[::1]:1", "not allowed"),
            ("http://localhost:1", "not allowed"),
            // Other spellings of the metadata and loopback addresses.
            ("http://2852039166/", "not allowed"),
            ("http://0xa9.0xfe.0xa9.0xfe/", "not allowed"),
            ("http://0x7f.1:47777", "not allowed"),
            ("http://[::ffff:169.254.169.254]/", "not allowed"),
            ("http://[fe80::1]/", "not allowed"),
            ("http://10.0.0.1:1/internal/admin", "path"),
            ("http://10.0.0.1:1/?confirm=yes", "query"),
            ("http://10.0.0.1:1/#x", "fragment"),
            ("http://u:p@10.0.0.1:1", "credentials"),
            ("ftp://10.0.0.1", "http"),
            ("not a url", "absolute"),
        ];
        for (u, why) in refused {
            let e = p.check(u).unwrap_err();
            assert!(e.contains(why), "{u}: {e}");
        }
        let p = InputUrlPolicy::parse("127.0.0.1/32, watcher, *.svc.cluster.local").unwrap();
        assert!(p.check("http://127.0.0.1:9").is_ok());
        assert!(p.check("http://127.0.0.2:9").is_err());
        assert!(p.check("http://watcher:8081").is_ok());
        assert!(p.check("http://a.b.svc.cluster.local:8081").is_ok());
        assert!(p.check("http://svc.cluster.local.evil:8081").is_err());
        assert!(p.check("http://10.0.0.1:9").is_err());
        for bad in ["10.0.0.0/33", "x/8", "bad name", "*."] {
            assert!(InputUrlPolicy::parse(bad).is_err(), "{bad}");
        }
    }
}
