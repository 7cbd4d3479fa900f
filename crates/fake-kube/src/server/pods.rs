//! `GET /api/v1/pods`, `GET /api/v1/namespaces/{ns}/pods[/{name}]`: lists
//! with label/field selectors, resourceVersion semantics and pagination;
//! `?watch=true` hands over to [`super::watch`].

use std::collections::HashMap;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde_json::{json, Value};

use super::{json_response, serve_fault, watch, App};
use crate::faults::Route;
use crate::selector::{FieldSelector, LabelSelector};
use crate::state::pods::PodFilter;
use crate::status::{ApiError, ApiResult};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/pods", get(list_all))
        .route("/api/v1/namespaces/{ns}/pods", get(list_namespaced))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
}

/// The query parameters of a list or watch, checked as the apiserver does.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: PodFilter,
    pub watch: bool,
    pub resource_version: Option<String>,
    pub version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub send_initial_events: bool,
}

fn flag(q: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid value for {key}: {other:?}"
        ))),
    }
}

fn number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}")))
        })
        .transpose()
}

impl ListQuery {
    pub fn parse(namespace: Option<String>, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        let resource_version = q.get("resourceVersion").filter(|v| !v.is_empty()).cloned();
        let version_match = q
            .get("resourceVersionMatch")
            .filter(|v| !v.is_empty())
            .cloned();
        let watch = flag(q, "watch")?;
        let send_initial_events = flag(q, "sendInitialEvents")?;
        let bookmarks = flag(q, "allowWatchBookmarks")?;
        let out = Self {
            filter: PodFilter {
                namespace,
                labels,
                fields,
            },
            watch,
            limit: number(q, "limit")?.filter(|l: &usize| *l > 0),
            continue_token: q.get("continue").filter(|v| !v.is_empty()).cloned(),
            timeout_seconds: number(q, "timeoutSeconds")?,
            resource_version,
            version_match,
            bookmarks,
            send_initial_events,
        };
        out.validate()?;
        Ok(out)
    }

    /// The apiserver's `ValidateListOptions`.
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(m) = self.version_match.as_deref() {
            if !matches!(m, "Exact" | "NotOlderThan") {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            if self.watch && !self.send_initial_events {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if !self.watch && self.resource_version.is_none() {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if m == "Exact" && self.resource_version.as_deref() == Some("0") {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            if self.continue_token.is_some() {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        if self.send_initial_events {
            if !self.watch {
                return Err(ApiError::bad_request(
                    "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
                ));
            }
            if self.version_match.as_deref() != Some("NotOlderThan") {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !self.bookmarks {
                return Err(ApiError::bad_request(
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
        if self.continue_token.is_some()
            && self.resource_version.as_deref().is_some_and(|rv| rv != "0")
        {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(())
    }
}

/// Parses a resourceVersion the fake handed out ("0" included).
pub fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid value: {rv:?}: resourceVersion must be an unsigned integer"
        ))
    })
}

/// A continue token: the list's resourceVersion and the last key served.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}/{ns}/{name}")
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    };
    let mut parts = token.splitn(3, '/');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_owned();
    let name = parts.next().ok_or_else(bad)?.to_owned();
    Ok((rv, ns, name))
}

async fn list_all(
    AxumState(app): AxumState<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(app, None, q).await
}

async fn list_namespaced(
    AxumState(app): AxumState<App>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(app, Some(ns), q).await
}

async fn list_or_watch(app: App, ns: Option<String>, q: HashMap<String, String>) -> Response {
    let query = match ListQuery::parse(ns, &q) {
        Ok(query) => query,
        Err(e) => return e.into_response(),
    };
    let route = if query.watch {
        Route::PodsWatch
    } else {
        Route::PodsList
    };
    if let Some(r) = serve_fault(&app, route).await {
        return r;
    }
    if query.watch {
        return watch::start(app, query);
    }
    list(&app, &query).unwrap_or_else(IntoResponse::into_response)
}

fn list(app: &App, q: &ListQuery) -> ApiResult {
    app.with(|s| {
        let current = s.rv;
        // The version the list is served at, and where a page starts.
        let (at, after) = if let Some(token) = &q.continue_token {
            let (rv, ns, name) = decode_continue(token)?;
            if rv < s.oldest_valid_rv {
                s.stats.expired += 1;
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter, or use the continue token \
                     in this response to retrieve the remainder of the results. Continuing with the \
                     provided token results in an inconsistent list - objects that were created, \
                     modified, or deleted between the time the first chunk was returned and now may \
                     show up in the list.",
                ));
            }
            (rv, Some((ns, name)))
        } else {
            match (q.resource_version.as_deref(), q.version_match.as_deref()) {
                // Most recent, or any ("0"): the current state.
                (None | Some("0"), _) => (current, None),
                (Some(rv), m) => {
                    let rv = parse_rv(rv)?;
                    if rv > current {
                        return Err(ApiError {
                            code: 504,
                            reason: "Timeout",
                            message: format!("Too large resource version: {rv}, current: {current}"),
                            details: None,
                        });
                    }
                    if m == Some("Exact") {
                        if rv < s.oldest_valid_rv {
                            s.stats.expired += 1;
                            return Err(ApiError::expired(format!(
                                "too old resource version: {rv} ({})",
                                s.oldest_valid_rv
                            )));
                        }
                        (rv, None)
                    } else {
                        // NotOlderThan (or legacy unset match): current is
                        // not older than anything handed out.
                        (current, None)
                    }
                }
            }
        };
        let mut items = if at == current {
            s.pods
                .pods
                .values()
                .filter(|p| q.filter.matches(p))
                .cloned()
                .collect()
        } else {
            s.pods.snapshot_at(at, &q.filter)
        };
        if let Some((ns, name)) = &after {
            items.retain(|p| {
                (
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or(""),
                ) > (ns.as_str(), name.as_str())
            });
        }
        let mut meta = ListMeta {
            resource_version: Some(at.to_string()),
            ..ListMeta::default()
        };
        if let Some(limit) = q.limit {
            if items.len() > limit {
                let remaining = items.len() - limit;
                items.truncate(limit);
                if let Some(last) = items.last() {
                    meta.continue_ = Some(encode_continue(
                        at,
                        last.metadata.namespace.as_deref().unwrap_or(""),
                        last.metadata.name.as_deref().unwrap_or(""),
                    ));
                    meta.remaining_item_count = i64::try_from(remaining).ok();
                }
            }
        }
        let body: Value = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": meta,
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &body))
    })
}

async fn get_pod(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::PodsGet).await {
        return r;
    }
    let found: ApiResult<Response> = app.with(|s| {
        s.pods
            .pods
            .get(&(ns.clone(), name.clone()))
            .map(|p| json_response(StatusCode::OK, p))
            .ok_or_else(|| ApiError::not_found("", "pods", &name))
    });
    match found {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}
