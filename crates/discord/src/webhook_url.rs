//! Webhook URLs: parsed once, the token kept out of every printout.
//!
//! A webhook URL is a credential: anyone holding it can post to the channel. It
//! arrives through config and bot-bridge, and it must never reach a log line, an
//! error or a metric. [`WebhookUrl`] holds the token as a [`Secret`], prints as
//! `…/webhooks/<id>/****<last4>`, and [`WebhookUrl::execute_url`] is the only way to
//! the full URL. Any host is accepted so fakes and proxies (nirn-proxy) work.

use std::fmt;
use std::str::FromStr;

use ops::Secret;
use serde::{Deserialize, Deserializer};
use url::Url;

/// Hosts that are Discord itself; any other host is a fake or a proxy.
pub const DISCORD_HOSTS: [&str; 6] = [
    "discord.com",
    "discordapp.com",
    "ptb.discord.com",
    "canary.discord.com",
    "ptb.discordapp.com",
    "canary.discordapp.com",
];

/// Why a string is not a webhook URL. Never contains the token (nor the URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("webhook URL is not a valid absolute URL")]
    Malformed,
    #[error("webhook URL must use http or https")]
    Scheme,
    #[error("webhook URL has no host")]
    MissingHost,
    #[error("webhook URL path must be /api[/vN]/webhooks/{{id}}/{{token}}")]
    Path,
    #[error("webhook id must be a numeric snowflake")]
    Id,
    #[error("webhook token must be non-empty and only contain A-Z a-z 0-9 _ -")]
    Token,
    #[error("thread_id must be a numeric snowflake")]
    ThreadId,
}

/// A parsed webhook URL; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `scheme://host[:port]/[prefix/]api[/vN]/webhooks/{id}`, token excluded.
    base: String,
    id: String,
    token: Secret<String>,
    thread_id: Option<String>,
    discord_host: bool,
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_api_version(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl WebhookUrl {
    /// Parses `http(s)://host[:port][/prefix]/api[/vN]/webhooks/{id}/{token}[/][?thread_id=N]`.
    /// `wait` and other query parameters are dropped: [`WebhookUrl::execute_url`]
    /// sets what the client needs.
    pub fn parse(s: &str) -> Result<Self, WebhookUrlError> {
        let url = Url::parse(s.trim()).map_err(|_| WebhookUrlError::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookUrlError::Scheme);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(WebhookUrlError::MissingHost)?;
        let mut segments: Vec<&str> = url.path_segments().ok_or(WebhookUrlError::Path)?.collect();
        if segments.last() == Some(&"") {
            segments.pop();
        }
        let [prefix @ .., webhooks, id, token] = segments.as_slice() else {
            return Err(WebhookUrlError::Path);
        };
        let api_at = match prefix {
            [.., api, version] if *api == "api" && is_api_version(version) => prefix.len() - 2,
            [.., api] if *api == "api" => prefix.len() - 1,
            _ => return Err(WebhookUrlError::Path),
        };
        if *webhooks != "webhooks" || prefix[..api_at].iter().any(|s| s.is_empty()) {
            return Err(WebhookUrlError::Path);
        }
        if !is_snowflake(id) {
            return Err(WebhookUrlError::Id);
        }
        if !is_token(token) {
            return Err(WebhookUrlError::Token);
        }
        let mut thread_id = None;
        for (key, value) in url.query_pairs() {
            if key == "thread_id" {
                if !is_snowflake(&value) {
                    return Err(WebhookUrlError::ThreadId);
                }
                thread_id = Some(value.into_owned());
            }
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            base: format!(
                "{}://{authority}/{}/webhooks/{id}",
                url.scheme(),
                prefix.join("/")
            ),
            id: (*id).to_owned(),
            token: Secret::new((*token).to_owned()),
            thread_id,
            discord_host: DISCORD_HOSTS.contains(&host.to_ascii_lowercase().as_str()),
        })
    }

    /// The webhook's id (a snowflake; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the host is Discord's own (anything else is a fake or a proxy,
    /// which the watcher logs once).
    pub fn is_discord_host(&self) -> bool {
        self.discord_host
    }

    /// The thread messages go to, from the URL's `thread_id` query parameter.
    pub fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
    }

    /// The URL to POST to: with the token, `?wait=true` (so Discord answers with
    /// the message and errors synchronously) and `thread_id` when set. The only
    /// place the token leaves this type; hand it to the HTTP client, nowhere else.
    pub fn execute_url(&self) -> String {
        let mut url = format!("{}/{}?wait=true", self.base, self.token.expose());
        if let Some(thread) = &self.thread_id {
            url.push_str("&thread_id=");
            url.push_str(thread);
        }
        url
    }

    /// The token, for redacting it from error texts that might echo it.
    pub(crate) fn token(&self) -> &Secret<String> {
        &self.token
    }

    /// The token's last four chars, or nothing when the token is so short that
    /// four chars would give most of it away (only fakes use such tokens).
    fn token_hint(&self) -> &str {
        let token = self.token.expose();
        if token.len() >= 16 {
            &token[token.len() - 4..]
        } else {
            ""
        }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/****{}", self.base, self.token_hint())?;
        if let Some(thread) = &self.thread_id {
            write!(f, "?thread_id={thread}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

impl FromStr for WebhookUrl {
    type Err = WebhookUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serialises redacted (the Display form), so an effective configuration that
/// holds a webhook can be logged as is.
impl serde::Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Lets config structs hold a `WebhookUrl` directly; errors never echo the value.
impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "AbCdEf_123-xyzSECRETTOKEN9876";

    #[test]
    fn parse_table() {
        let ok: &[(&str, &str, Option<&str>, bool, &str)] = &[
            (
                "https://discord.com/api/webhooks/123/TOKEN",
                "123",
                None,
                true,
                "https://discord.com/api/webhooks/123/TOKEN?wait=true",
            ),
            (
                "https://discordapp.com/api/v10/webhooks/123/TOKEN/",
                "123",
                None,
                true,
                "https://discordapp.com/api/v10/webhooks/123/TOKEN?wait=true",
            ),
            (
                "https://ptb.discord.com/api/v9/webhooks/1/TOKEN?wait=false&thread_id=42",
                "1",
                Some("42"),
                true,
                "https://ptb.discord.com/api/v9/webhooks/1/TOKEN?wait=true&thread_id=42",
            ),
            (
                "https://Canary.Discord.com/api/webhooks/9/TOKEN",
                "9",
                None,
                true,
                "https://canary.discord.com/api/webhooks/9/TOKEN?wait=true",
            ),
            (
                "http://127.0.0.1:8081/api/v10/webhooks/555/TOKEN",
                "555",
                None,
                false,
                "http://127.0.0.1:8081/api/v10/webhooks/555/TOKEN?wait=true",
            ),
            (
                "http://nirn-proxy.svc:8080/discord/api/webhooks/7/TOKEN?other=1",
                "7",
                None,
                false,
                "http://nirn-proxy.svc:8080/discord/api/webhooks/7/TOKEN?wait=true",
            ),
            (
                "https://discord.com:443/api/webhooks/8/TOKEN",
                "8",
                None,
                true,
                "https://discord.com/api/webhooks/8/TOKEN?wait=true",
            ),
            (
                "http://[::1]:9/api/webhooks/8/TOKEN",
                "8",
                None,
                false,
                "http://[::1]:9/api/webhooks/8/TOKEN?wait=true",
            ),
        ];
        for (raw, id, thread, discord, execute) in ok {
            let raw = raw.replace("TOKEN", TOKEN);
            let url = WebhookUrl::parse(&raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.id(), *id, "{raw}");
            assert_eq!(url.thread_id(), *thread, "{raw}");
            assert_eq!(url.is_discord_host(), *discord, "{raw}");
            assert_eq!(url.execute_url(), execute.replace("TOKEN", TOKEN), "{raw}");
            assert_eq!(raw.parse::<WebhookUrl>().ok(), Some(url));
        }

        use WebhookUrlError as E;
        let bad: &[(&str, E)] = &[
            ("discord.com/api/webhooks/1/TOKEN", E::Malformed),
            ("", E::Malformed),
            ("ftp://discord.com/api/webhooks/1/TOKEN", E::Scheme),
            ("https://discord.com/webhooks/1/TOKEN", E::Path),
            ("https://discord.com/api/webhooks/1", E::Path),
            ("https://discord.com/api/hooks/1/TOKEN", E::Path),
            ("https://discord.com/api/vx/webhooks/1/TOKEN", E::Path),
            ("https://discord.com/api/webhooks/1/TOKEN/extra", E::Path),
            ("https://discord.com/api/webhooks/abc/TOKEN", E::Id),
            ("https://discord.com/api/webhooks/1/TOKEN%21", E::Token),
            (
                "https://discord.com/api/webhooks/1/TOKEN?thread_id=x",
                E::ThreadId,
            ),
        ];
        for (raw, want) in bad {
            let raw = raw.replace("TOKEN", TOKEN);
            let err = WebhookUrl::parse(&raw).err();
            assert_eq!(err.as_ref(), Some(want), "{raw}");
            let shown = format!(
                "{} {:?}",
                err.as_ref().map_or(String::new(), |e| e.to_string()),
                err
            );
            assert!(!shown.contains("SECRET"), "token leaked for {raw}: {shown}");
        }
    }

    #[test]
    fn printing_hides_the_token() {
        let url = WebhookUrl::parse(&format!(
            "https://discord.com/api/v10/webhooks/123/{TOKEN}?thread_id=5"
        ))
        .unwrap();
        let shown = url.to_string();
        assert_eq!(
            shown,
            "https://discord.com/api/v10/webhooks/123/****9876?thread_id=5"
        );
        assert!(!format!("{url:?}").contains("SECRET"));
        let short = WebhookUrl::parse("http://fake/api/webhooks/1/abc").unwrap();
        assert_eq!(short.to_string(), "http://fake/api/webhooks/1/****");
    }

    #[test]
    fn deserialize_errors_do_not_echo_the_token() {
        #[derive(Debug, Deserialize)]
        struct Conf {
            #[allow(dead_code)]
            url: WebhookUrl,
        }
        let bad = format!(r#"{{"url":"https://discord.com/api/webhooks/x/{TOKEN}"}}"#);
        let err = serde_json::from_str::<Conf>(&bad).unwrap_err().to_string();
        assert!(
            err.contains("snowflake") && !err.contains("SECRET"),
            "{err}"
        );
        let good = format!(r#"{{"url":"https://discord.com/api/webhooks/1/{TOKEN}"}}"#);
        assert!(serde_json::from_str::<Conf>(&good).is_ok());
    }
}
