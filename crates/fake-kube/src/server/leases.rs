//! Leases (`coordination.k8s.io/v1`): get, list, create, replace (PUT) and
//! delete, with optimistic concurrency on `metadata.resourceVersion` as
//! leader election needs it.

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

use super::{decode, json_response, serve_fault, App};
use crate::faults::Route;
use crate::state::pods::now;
use crate::status::ApiError;

const GROUP: &str = "coordination.k8s.io";
const BASE: &str = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";

pub fn routes() -> Router<App> {
    Router::new().route(BASE, get(list).post(create)).route(
        &format!("{BASE}/{{name}}"),
        get(read).put(replace).delete(remove),
    )
}

fn done(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn list(AxumState(app): AxumState<App>, Path(ns): Path<String>) -> Response {
    if let Some(r) = serve_fault(&app, Route::Leases).await {
        return r;
    }
    app.with(|s| {
        let items: Vec<&Lease> = s
            .leases
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|(_, l)| l)
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        )
    })
}

async fn read(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Leases).await {
        return r;
    }
    done(app.with(|s| {
        s.lease(&ns, &name)
            .map(|l| json_response(StatusCode::OK, l))
            .ok_or_else(|| ApiError::not_found(GROUP, "leases", &name))
    }))
}

async fn create(AxumState(app): AxumState<App>, Path(ns): Path<String>, body: Bytes) -> Response {
    if let Some(r) = serve_fault(&app, Route::Leases).await {
        return r;
    }
    done(app.with(|s| {
        let mut lease: Lease = decode(&body)?;
        if lease
            .metadata
            .resource_version
            .as_deref()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = lease.metadata.name.clone().unwrap_or_default();
        if s.lease(&ns, &name).is_some() {
            return Err(ApiError::already_exists(GROUP, "leases", &name));
        }
        let name = s.admit_new(&mut lease.metadata, &ns, GROUP, "Lease")?;
        s.leases.insert((ns.clone(), name), lease.clone());
        app.recorded.notify_waiters();
        Ok(json_response(StatusCode::CREATED, &lease))
    }))
}

async fn replace(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Leases).await {
        return r;
    }
    done(app.with(|s| {
        let mut lease: Lease = decode(&body)?;
        if lease.metadata.name.as_deref() != Some(name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                lease.metadata.name.as_deref().unwrap_or("")
            )));
        }
        if lease.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let Some(stored) = s.lease(&ns, &name).cloned() else {
            return Err(ApiError::not_found(GROUP, "leases", &name));
        };
        match lease.metadata.resource_version.as_deref() {
            None | Some("") => {
                return Err(ApiError::invalid(
                    GROUP,
                    "Lease",
                    &name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ))
            }
            Some(rv) if Some(rv) != stored.metadata.resource_version.as_deref() => {
                s.stats.lease_conflicts += 1;
                return Err(ApiError::conflict(GROUP, "leases", &name));
            }
            Some(_) => {}
        }
        lease.metadata.namespace = Some(ns.clone());
        lease.metadata.uid = stored.metadata.uid.clone();
        lease.metadata.creation_timestamp = stored
            .metadata
            .creation_timestamp
            .clone()
            .or_else(|| Some(now()));
        lease.metadata.resource_version = Some(s.next_rv().to_string());
        s.leases.insert((ns.clone(), name.clone()), lease.clone());
        app.recorded.notify_waiters();
        Ok(json_response(StatusCode::OK, &lease))
    }))
}

async fn remove(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = serve_fault(&app, Route::Leases).await {
        return r;
    }
    done(app.with(|s| {
        s.leases
            .remove(&(ns.clone(), name.clone()))
            .map(|l| json_response(StatusCode::OK, &l))
            .ok_or_else(|| ApiError::not_found(GROUP, "leases", &name))
    }))
}
