//! Events, both APIs: `core/v1` (`/api/v1/namespaces/{ns}/events`) and
//! `events.k8s.io/v1` (what kube-runtime's `Recorder` uses: create, then
//! JSON merge patches for a series). Stored for tests to assert on; the
//! events.k8s.io required fields are checked as the apiserver does.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event as EventsV1;
use serde_json::{json, Value};

use super::{decode, json_response, serve_fault, App};
use crate::faults::Route;
use crate::selector::LabelSelector;
use crate::state::{EventApi, RecordedEvent, State};
use crate::status::ApiError;

const CORE: &str = "/api/v1/namespaces/{ns}/events";
const EVENTS_V1: &str = "/apis/events.k8s.io/v1/namespaces/{ns}/events";

/// The longest `note` events.k8s.io accepts.
const MAX_NOTE_BYTES: usize = 1024;

pub fn routes() -> Router<App> {
    Router::new()
        .merge(api_routes(CORE, EventApi::CoreV1))
        .merge(api_routes(EVENTS_V1, EventApi::EventsV1))
}

/// The same four operations under either API's path.
fn api_routes(base: &str, api: EventApi) -> Router<App> {
    Router::new()
        .route(
            base,
            get(move |app, ns, q| list_handler(app, ns, q, api))
                .post(move |app, ns, body| create_handler(app, ns, body, api)),
        )
        .route(
            &format!("{base}/{{name}}"),
            get(move |app, path| get_handler(app, path, api)).patch(
                move |app, path, headers, body| patch_handler(app, path, headers, body, api),
            ),
        )
}

fn done(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

fn group(api: EventApi) -> &'static str {
    match api {
        EventApi::CoreV1 => "",
        EventApi::EventsV1 => "events.k8s.io",
    }
}

fn validate_v1(e: &EventsV1, name: &str) -> Result<(), ApiError> {
    let invalid = |field: &str, problem: &str| {
        Err(ApiError::invalid(
            "events.k8s.io",
            "Event",
            name,
            field,
            problem,
        ))
    };
    if e.event_time.is_none() {
        return invalid("eventTime", "Required value");
    }
    for (field, value) in [
        ("reportingController", &e.reporting_controller),
        ("reportingInstance", &e.reporting_instance),
        ("action", &e.action),
        ("reason", &e.reason),
    ] {
        match value.as_deref() {
            None | Some("") => return invalid(field, "Required value"),
            Some(v) if v.len() > 128 => {
                return invalid(field, "Too long: must have at most 128 bytes")
            }
            Some(_) => {}
        }
    }
    if !matches!(e.type_.as_deref(), Some("Normal" | "Warning")) {
        return invalid(
            "type",
            "Unsupported value: supported values: \"Normal\", \"Warning\"",
        );
    }
    if e.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return invalid("note", "Too long: must have at most 1024 bytes");
    }
    Ok(())
}

fn validate_core(e: &CoreEvent, ns: &str, name: &str) -> Result<(), ApiError> {
    if e.involved_object
        .namespace
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return Err(ApiError::invalid(
            "",
            "Event",
            name,
            "involvedObject.namespace",
            "Invalid value: does not match event.namespace",
        ));
    }
    if !matches!(e.type_.as_deref(), None | Some("" | "Normal" | "Warning")) {
        return Err(ApiError::invalid(
            "",
            "Event",
            name,
            "type",
            "Unsupported value: supported values: \"Normal\", \"Warning\"",
        ));
    }
    Ok(())
}

fn store(
    s: &mut State,
    api: EventApi,
    ns: &str,
    name: String,
    object: Value,
) -> Result<Response, ApiError> {
    if s.events
        .iter()
        .any(|e| e.api == api && e.namespace == ns && e.name == name)
    {
        return Err(ApiError::already_exists(group(api), "events", &name));
    }
    s.events.push(RecordedEvent {
        api,
        namespace: ns.to_owned(),
        name,
        object: object.clone(),
        writes: 1,
    });
    Ok(json_response(StatusCode::CREATED, &object))
}

async fn create_handler(
    AxumState(app): AxumState<App>,
    Path(ns): Path<String>,
    body: Bytes,
    api: EventApi,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Events).await {
        return r;
    }
    let r = app.with(|s| match api {
        EventApi::CoreV1 => {
            let mut e: CoreEvent = decode(&body)?;
            let name = s.admit_new(&mut e.metadata, &ns, "", "Event")?;
            validate_core(&e, &ns, &name)?;
            let object = serde_json::to_value(&e).unwrap_or(Value::Null);
            store(s, api, &ns, name, object)
        }
        EventApi::EventsV1 => {
            let mut e: EventsV1 = decode(&body)?;
            let name = e.metadata.name.clone().unwrap_or_default();
            validate_v1(&e, &name)?;
            let name = s.admit_new(&mut e.metadata, &ns, "events.k8s.io", "Event")?;
            let object = serde_json::to_value(&e).unwrap_or(Value::Null);
            store(s, api, &ns, name, object)
        }
    });
    app.recorded.notify_waiters();
    done(r)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn patch(
    app: &App,
    api: EventApi,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/merge-patch+json") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    let patch: Value = decode(body)?;
    app.with(|s| {
        let rv = s.next_rv().to_string();
        let Some(stored) = s.find_event(api, ns, name) else {
            return Err(ApiError::not_found(group(api), "events", name));
        };
        let mut object = stored.object.clone();
        merge_patch(&mut object, &patch);
        // The result must still be a valid Event of its API.
        match api {
            EventApi::EventsV1 => {
                let e: EventsV1 = serde_json::from_value(object.clone())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                validate_v1(&e, name)?;
            }
            EventApi::CoreV1 => {
                let e: CoreEvent = serde_json::from_value(object.clone())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                validate_core(&e, ns, name)?;
            }
        }
        object["metadata"]["resourceVersion"] = json!(rv);
        object["metadata"]["name"] = json!(name);
        object["metadata"]["namespace"] = json!(ns);
        stored.object = object.clone();
        stored.writes += 1;
        Ok(json_response(StatusCode::OK, &object))
    })
}

async fn patch_handler(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    api: EventApi,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Events).await {
        return r;
    }
    let r = patch(&app, api, &ns, &name, &headers, &body);
    app.recorded.notify_waiters();
    done(r)
}

fn get_one(app: &App, api: EventApi, ns: &str, name: &str) -> Result<Response, ApiError> {
    app.with(|s| {
        s.find_event(api, ns, name)
            .map(|e| json_response(StatusCode::OK, &e.object))
            .ok_or_else(|| ApiError::not_found(group(api), "events", name))
    })
}

async fn get_handler(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    api: EventApi,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Events).await {
        return r;
    }
    done(get_one(&app, api, &ns, &name))
}

fn list(
    app: &App,
    api: EventApi,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(app.with(|s| {
        let items: Vec<&Value> = s
            .events
            .iter()
            .filter(|e| e.api == api && e.namespace == ns)
            .filter(|e| {
                let l = e.object["metadata"]["labels"].as_object().map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                });
                labels.matches(l.as_ref())
            })
            .map(|e| &e.object)
            .collect();
        let (kind, version) = match api {
            EventApi::CoreV1 => ("EventList", "v1"),
            EventApi::EventsV1 => ("EventList", "events.k8s.io/v1"),
        };
        json_response(
            StatusCode::OK,
            &json!({"kind": kind, "apiVersion": version,
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        )
    }))
}

async fn list_handler(
    AxumState(app): AxumState<App>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    api: EventApi,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Events).await {
        return r;
    }
    done(list(&app, api, &ns, &q))
}
