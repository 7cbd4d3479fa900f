//! A wrapper for values that must never reach logs, errors, metrics or API bodies.
//!
//! Tokens and webhook URLs travel through config structs that are logged as
//! "effective config" at start-up and through error chains. Wrapping them makes the
//! safe thing the default: `Debug`, `Display` and `Serialize` all print a fixed
//! marker, and the only way to the value is the explicit [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The marker printed instead of a secret value.
pub const REDACTED: &str = "[redacted]";

/// A value that redacts itself in `Debug`, `Display` and serde serialisation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the value. Call it only where the value is sent to its
    /// one legitimate consumer (an HTTP header, an HMAC key), never into a log.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value, for the same narrow uses as [`Secret::expose`].
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl std::str::FromStr for Secret<String> {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `url` with its credentials masked: the user and password, every query
/// value and the fragment become `****` (query keys stay, they say what is
/// configured). Something that does not parse as a URL is hidden whole: it
/// may be a secret pasted into the wrong setting. For URLs that are shown
/// (`check-config`, the effective config logged at start) but may carry
/// credentials (`https://user:pass@collector/`, `?token=...`).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    if !u.username().is_empty() {
        let _ = u.set_username("****");
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    if u.query().is_some() {
        let keys: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut q = u.query_pairs_mut();
        q.clear();
        for k in keys {
            q.append_pair(&k, "****");
        }
    }
    if u.fragment().is_some() {
        u.set_fragment(Some("****"));
    }
    u.to_string()
}

/// Serde `serialize_with` for a URL that may carry credentials ([`redact_url`]).
pub fn serialize_url<U: AsRef<str>, S: Serializer>(url: &U, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url.as_ref()))
}

/// [`serialize_url`] for an optional URL.
pub fn serialize_opt_url<U: AsRef<str>, S: Serializer>(
    url: &Option<U>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => serialize_url(u, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Conf {
        name: String,
        token: Secret<String>,
    }

    #[test]
    fn urls_lose_their_credentials_but_keep_their_shape() {
        assert_eq!(
            redact_url("https://alice:hunter2@collector:4318/v1/traces?token=abc&tenant=t1#frag"),
            "https://****:****@collector:4318/v1/traces?token=****&tenant=****#****"
        );
        assert_eq!(
            redact_url("http://bridge.agentmon:8080/"),
            "http://bridge.agentmon:8080/"
        );
        assert_eq!(redact_url("hunter2 not a url"), REDACTED);
        #[derive(Serialize)]
        struct C {
            #[serde(serialize_with = "serialize_opt_url")]
            otlp: Option<String>,
        }
        let json = serde_json::to_string(&C {
            otlp: Some("http://u:hunter2@c/".into()),
        })
        .unwrap();
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[test]
    fn secret_never_prints_its_value() {
        let conf: Conf =
            serde_json::from_str(r#"{"name":"n","token":"hunter2-very-secret"}"#).unwrap();
        assert_eq!(conf.token.expose(), "hunter2-very-secret");
        let debug = format!("{conf:?}");
        let display = format!("{}", conf.token);
        let json = serde_json::to_string(&conf).unwrap();
        for out in [&debug, &display, &json] {
            assert!(!out.contains("hunter2"), "secret leaked: {out}");
            assert!(out.contains(REDACTED), "marker missing: {out}");
        }
    }
}
