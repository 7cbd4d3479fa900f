//! The table of test tokens and how a TokenReview answers from it: like the
//! apiserver's ServiceAccount token authenticator for bound (projected)
//! tokens.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::pods::PodKey;

/// `user.extra` keys of a bound ServiceAccount token (k8s.io/apiserver
/// `pkg/authentication/serviceaccount`).
pub mod extra {
    pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
    pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
    pub const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
    pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
}

/// A token the fake's TokenReview knows: a projected ServiceAccount token
/// bound to a pod (or to nothing, like a legacy Secret token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestToken {
    /// The bearer token itself.
    pub token: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod it is bound to (`None`: not bound).
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
    /// The token's `aud` claim.
    pub audiences: Vec<String>,
    /// Seconds of validity from when it was added (`None`: never expires).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A table entry: the token plus when it stops being valid.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub token: TestToken,
    pub expires_at: Option<Instant>,
    /// `JTI=…`, the `credential-id` extra.
    pub credential_id: String,
    pub service_account_uid: String,
}

/// Why a token is not authenticated (`status.error`, worded as the
/// apiserver words it).
fn unauthenticated(error: String) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(false),
        error: Some(error),
        user: Some(UserInfo::default()),
        audiences: None,
    }
}

/// Answers a TokenReview for `token` wanting `audiences` (empty: the
/// apiserver's own `api_audiences`). `pod_uid_of` looks a bound pod up: a
/// token whose pod is gone or has another UID is rejected, as the apiserver
/// does.
pub fn review(
    table: &BTreeMap<String, TokenEntry>,
    token: &str,
    audiences: &[String],
    api_audiences: &[String],
    now: Instant,
    pod_uid_of: impl Fn(&PodKey) -> Option<String>,
) -> TokenReviewStatus {
    let Some(entry) = table.get(token) else {
        return unauthenticated("[invalid bearer token, token lookup failed]".to_owned());
    };
    if entry.expires_at.is_some_and(|at| now >= at) {
        return unauthenticated(
            "[invalid bearer token, service account token has expired]".to_owned(),
        );
    }
    let wanted = if audiences.is_empty() {
        api_audiences
    } else {
        audiences
    };
    let t = &entry.token;
    let granted: Vec<String> = wanted
        .iter()
        .filter(|a| t.audiences.contains(a))
        .cloned()
        .collect();
    if granted.is_empty() {
        return unauthenticated(format!(
            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
            t.audiences, wanted
        ));
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(pod) = &t.pod_name {
        let key = (t.namespace.clone(), pod.clone());
        match pod_uid_of(&key) {
            None => {
                return unauthenticated(format!(
                    "[invalid bearer token, pods \"{pod}\" not found]"
                ))
            }
            Some(uid) if t.pod_uid.as_ref().is_some_and(|want| *want != uid) => {
                return unauthenticated(format!(
                    "[invalid bearer token, pods \"{pod}\" has changed (UID {uid}), the token is bound to another one]"
                ))
            }
            Some(uid) => {
                extra.insert(extra::POD_NAME.to_owned(), vec![pod.clone()]);
                extra.insert(
                    extra::POD_UID.to_owned(),
                    vec![t.pod_uid.clone().unwrap_or(uid)],
                );
            }
        }
    }
    if let Some(node) = &t.node_name {
        extra.insert(extra::NODE_NAME.to_owned(), vec![node.clone()]);
    }
    extra.insert(
        extra::CREDENTIAL_ID.to_owned(),
        vec![entry.credential_id.clone()],
    );
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(granted),
        error: None,
        user: Some(UserInfo {
            username: Some(format!(
                "system:serviceaccount:{}:{}",
                t.namespace, t.service_account
            )),
            uid: Some(entry.service_account_uid.clone()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", t.namespace),
                "system:authenticated".to_owned(),
            ]),
            extra: Some(extra),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn table(now: Instant) -> BTreeMap<String, TokenEntry> {
        let token = TestToken {
            token: "t1".into(),
            namespace: "agents".into(),
            service_account: "agent".into(),
            pod_name: Some("agent-1".into()),
            pod_uid: Some("uid-1".into()),
            node_name: Some("node-1".into()),
            audiences: vec!["agentmon".into()],
            expires_in_seconds: Some(60),
        };
        BTreeMap::from([(
            "t1".to_owned(),
            TokenEntry {
                token,
                expires_at: Some(now + Duration::from_secs(60)),
                credential_id: "JTI=1".into(),
                service_account_uid: "sa-uid".into(),
            },
        )])
    }

    #[test]
    fn a_bound_token_names_its_pod_and_respects_audience_expiry_and_binding() {
        let now = Instant::now();
        let t = table(now);
        let api = vec!["https://kubernetes.default.svc.cluster.local".to_owned()];
        let live = |_: &PodKey| Some("uid-1".to_owned());
        let ok = review(&t, "t1", &["agentmon".into()], &api, now, live);
        assert_eq!(ok.authenticated, Some(true));
        assert_eq!(ok.audiences, Some(vec!["agentmon".to_owned()]));
        let user = ok.user.unwrap();
        assert_eq!(
            user.username.as_deref(),
            Some("system:serviceaccount:agents:agent")
        );
        let extra = user.extra.unwrap();
        assert_eq!(extra[extra::POD_NAME], vec!["agent-1"]);
        assert_eq!(extra[extra::POD_UID], vec!["uid-1"]);

        let other = review(&t, "t1", &["vault".into()], &api, now, live);
        assert_eq!(other.authenticated, Some(false));
        assert!(other.error.unwrap().contains("audiences"));
        // No audiences asked: the apiserver's own, which this token lacks.
        assert_eq!(
            review(&t, "t1", &[], &api, now, live).authenticated,
            Some(false)
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            review(&t, "t1", &["agentmon".into()], &api, later, live).authenticated,
            Some(false)
        );
        assert_eq!(
            review(&t, "nope", &["agentmon".into()], &api, now, live).authenticated,
            Some(false)
        );
        let gone = review(&t, "t1", &["agentmon".into()], &api, now, |_| None);
        assert!(gone.error.unwrap().contains("not found"));
        let replaced = review(&t, "t1", &["agentmon".into()], &api, now, |_| {
            Some("uid-2".to_owned())
        });
        assert_eq!(replaced.authenticated, Some(false));
    }
}
