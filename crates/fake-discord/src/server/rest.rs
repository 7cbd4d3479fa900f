//! The bot REST routes bot-bridge calls (see `discord::rest::routes`).
//!
//! Each call passes: injected fault → `Authorization: Bot <token>` (401
//! otherwise; interaction edits need none) → global and per-route limit (429)
//! → the operation, whose answer carries the route's `X-RateLimit-*` headers.

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{
    bot_token, error_with_bucket, serve_fault, unify, with_bucket, App, FaultOutcome, Handled,
};
use crate::error::{Advertised, ApiError};
use crate::state::{kind, InteractionEdit, State};
use crate::validate::{self, codes, limits, Checker, Rejection, Violation};

/// Route templates, the same strings as `discord::rest::routes`.
pub mod route {
    pub const LIST_GUILD_CHANNELS: &str = "GET /guilds/{guild_id}/channels";
    pub const CREATE_CHANNEL: &str = "POST /guilds/{guild_id}/channels";
    pub const GET_CHANNEL: &str = "GET /channels/{channel_id}";
    pub const MODIFY_CHANNEL: &str = "PATCH /channels/{channel_id}";
    pub const DELETE_CHANNEL: &str = "DELETE /channels/{channel_id}";
    pub const CREATE_WEBHOOK: &str = "POST /channels/{channel_id}/webhooks";
    pub const LIST_CHANNEL_WEBHOOKS: &str = "GET /channels/{channel_id}/webhooks";
    pub const GET_WEBHOOK: &str = "GET /webhooks/{webhook_id}";
    pub const DELETE_WEBHOOK: &str = "DELETE /webhooks/{webhook_id}";
    pub const CREATE_THREAD: &str = "POST /channels/{channel_id}/threads";
    pub const GUILD_COMMANDS: &str =
        "PUT /applications/{application_id}/guilds/{guild_id}/commands";
    pub const GET_GUILD_COMMANDS: &str =
        "GET /applications/{application_id}/guilds/{guild_id}/commands";
    pub const GLOBAL_COMMANDS: &str = "PUT /applications/{application_id}/commands";
    pub const GET_GLOBAL_COMMANDS: &str = "GET /applications/{application_id}/commands";
    pub const EDIT_ORIGINAL_RESPONSE: &str =
        "PATCH /webhooks/{application_id}/{interaction_token}/messages/@original";
}

pub fn routes() -> Router<App> {
    Router::new()
        .route(
            "/guilds/{guild_id}/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/channels/{channel_id}",
            get(get_channel)
                .patch(modify_channel)
                .delete(delete_channel),
        )
        .route(
            "/channels/{channel_id}/webhooks",
            post(create_webhook).get(list_channel_webhooks),
        )
        .route("/channels/{channel_id}/threads", post(create_thread))
        .route(
            "/webhooks/{webhook_id}",
            get(get_webhook).delete(delete_webhook),
        )
        .route(
            "/applications/{application_id}/guilds/{guild_id}/commands",
            get(get_guild_commands).put(put_guild_commands),
        )
        .route(
            "/applications/{application_id}/commands",
            get(get_global_commands).put(put_global_commands),
        )
        // Same parameter names as the execute route: the router needs them equal.
        .route(
            "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
            patch(edit_original),
        )
}

/// Fault, auth and rate limit for one call; the bucket to advertise on success.
async fn begin(
    app: &App,
    headers: &HeaderMap,
    route: &str,
    major: &str,
    auth: bool,
) -> Result<Advertised, Response> {
    if let FaultOutcome::Respond(r) = serve_fault(app, route, None, |_| None).await {
        return Err(r);
    }
    if auth {
        let wanted = app.with(|s| s.config.bot_token.clone());
        let ok = match (bot_token(headers), wanted.as_deref()) {
            (None, _) => false,
            (Some(got), Some(want)) => got == want,
            (Some(_), None) => true,
        };
        if !ok {
            app.with(|s| s.stats.rest_unauthorized += 1);
            return Err(ApiError::unauthorized().into_response());
        }
    }
    let now = Instant::now();
    app.with(|s| s.limit_rest(route, major, now))
        .map_err(IntoResponse::into_response)
}

/// Parses a JSON body; 400 50109 when it is not JSON.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_JSON,
            "The request body contains invalid JSON.",
        )
    })
}

fn form_error(path: &str, code: &'static str, message: impl Into<String>) -> ApiError {
    Rejection::form(vec![Violation {
        path: path.split('.').map(str::to_owned).collect(),
        code,
        message: message.into(),
        reason: "rest",
    }])
    .into()
}

/// A 400 that also counts in the stats.
fn rejected(app: &App, route: &str, e: ApiError, adv: &Advertised) -> Response {
    if e.status == StatusCode::BAD_REQUEST {
        app.with(|s| s.count_rest_rejected(route));
    }
    error_with_bucket(e, adv)
}

fn check_guild(app: &App, guild_id: &str) -> Result<(), ApiError> {
    if app.with(|s| s.config.guild_id == guild_id) {
        Ok(())
    } else {
        Err(ApiError::unknown_guild())
    }
}

async fn list_channels(
    AxumState(app): AxumState<App>,
    Path(guild_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(&app, &headers, route::LIST_GUILD_CHANNELS, &guild_id, true).await?;
            check_guild(&app, &guild_id).map_err(|e| error_with_bucket(e, &adv))?;
            let mut list: Vec<_> = app.with(|s| {
                s.channels
                    .values()
                    .filter(|c| !kind::is_thread(c.kind))
                    .cloned()
                    .collect()
            });
            list.sort_by_key(|c| c.position);
            let list: Vec<Value> = list.iter().map(|c| c.to_json()).collect();
            Ok(with_bucket(StatusCode::OK, &adv, Value::Array(list)))
        }
        .await,
    )
}

/// Validated permission overwrites (bit sets normalised to decimal strings).
fn overwrites(c: &mut Checker, v: Option<&Value>) -> Vec<Value> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(list) = v.as_array() else {
        c.push(
            vec!["permission_overwrites".into()],
            "BASE_TYPE_LIST",
            "Only iterables may be used in a ListType".into(),
            "rest",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, o) in list.iter().enumerate() {
        let at = |k: &str| vec!["permission_overwrites".into(), i.to_string(), k.to_owned()];
        let id = o
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| is_snowflake(s));
        if id.is_none() {
            c.push(
                at("id"),
                "BASE_TYPE_REQUIRED",
                "This field is required".into(),
                "rest",
            );
        }
        let ty = o.get("type").and_then(Value::as_u64).filter(|t| *t <= 1);
        if ty.is_none() {
            c.push(
                at("type"),
                "BASE_TYPE_CHOICES",
                "Value must be one of (0, 1).".into(),
                "rest",
            );
        }
        let mut bits = |k: &str| -> String {
            match o.get(k) {
                None | Some(Value::Null) => "0".into(),
                Some(Value::String(s))
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    s.clone()
                }
                Some(Value::Number(n)) if n.is_u64() => n.to_string(),
                Some(_) => {
                    c.push(
                        at(k),
                        "NUMBER_TYPE_COERCE",
                        "Value is not int.".into(),
                        "rest",
                    );
                    "0".into()
                }
            }
        };
        let (allow, deny) = (bits("allow"), bits("deny"));
        out.push(
            json!({"id": id.unwrap_or(""), "type": ty.unwrap_or(0), "allow": allow, "deny": deny}),
        );
    }
    out
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a channel name for `kind`; pushes a violation when it is wrong.
fn channel_name(
    c: &mut Checker,
    obj: &Map<String, Value>,
    kind_: u8,
    required: bool,
) -> Option<String> {
    if !required && obj.get("name").is_none_or(Value::is_null) {
        return None;
    }
    let n = c.required_len(obj, &[], "name", limits::CHANNEL_NAME, "rest");
    let name = obj.get("name").and_then(Value::as_str)?;
    if n > 0 && matches!(kind_, kind::TEXT | kind::FORUM) && !validate::text_channel_name(name) {
        c.push(
            vec!["name".into()],
            "CHANNEL_NAME_INVALID",
            "Text channel names must be lowercase [a-z0-9-_]".into(),
            "rest",
        );
    }
    Some(name.to_owned())
}

/// Why `parent` cannot take one more child (`moving` is already in it when
/// only modified).
fn parent_error(s: &State, parent: &str, moving: Option<&str>) -> Option<ApiError> {
    let Some(p) = s.channels.get(parent) else {
        return Some(form_error(
            "parent_id",
            "CHANNEL_PARENT_INVALID",
            "Unknown category",
        ));
    };
    if p.kind != kind::CATEGORY {
        return Some(form_error(
            "parent_id",
            "CHANNEL_PARENT_INVALID_TYPE",
            "Parent must be a category",
        ));
    }
    let already = moving.is_some_and(|m| {
        s.channels
            .get(m)
            .is_some_and(|c| c.parent_id.as_deref() == Some(parent))
    });
    if !already && s.category_children(parent) >= limits::CHANNELS_PER_CATEGORY {
        return Some(form_error(
            "parent_id",
            "CHANNEL_PARENT_MAX_CHANNELS",
            "Maximum number of channels in category reached (50)",
        ));
    }
    None
}

async fn create_channel(
    AxumState(app): AxumState<App>,
    Path(guild_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = route::CREATE_CHANNEL;
    unify(
        async {
            let adv = begin(&app, &headers, r, &guild_id, true).await?;
            check_guild(&app, &guild_id).map_err(|e| error_with_bucket(e, &adv))?;
            let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
            let Some(obj) = v.as_object() else {
                return Err(rejected(
                    &app,
                    r,
                    form_error("name", "BASE_TYPE_REQUIRED", "This field is required"),
                    &adv,
                ));
            };
            let mut c = Checker::default();
            let kind_ = match obj.get("type") {
                None | Some(Value::Null) => kind::TEXT,
                Some(t) => match t.as_u64().and_then(|t| u8::try_from(t).ok()) {
                    Some(t @ (kind::TEXT | kind::CATEGORY | kind::FORUM)) => t,
                    _ => {
                        c.push(
                            vec!["type".into()],
                            "BASE_TYPE_CHOICES",
                            "Value must be one of (0, 4, 15).".into(),
                            "rest",
                        );
                        kind::TEXT
                    }
                },
            };
            let name = channel_name(&mut c, obj, kind_, true);
            let parent = match obj.get("parent_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if is_snowflake(p) => Some(p.clone()),
                Some(_) => {
                    c.push(
                        vec!["parent_id".into()],
                        "NUMBER_TYPE_COERCE",
                        "Value is not snowflake.".into(),
                        "rest",
                    );
                    None
                }
            };
            if kind_ == kind::CATEGORY && parent.is_some() {
                c.push(
                    vec!["parent_id".into()],
                    "CHANNEL_PARENT_INVALID_TYPE",
                    "Categories cannot have subcategories".into(),
                    "rest",
                );
            }
            let ows = overwrites(&mut c, obj.get("permission_overwrites"));
            c.max_len(obj, &[], "topic", 1024, "rest");
            let topic = obj.get("topic").and_then(Value::as_str).map(str::to_owned);
            if !c.violations.is_empty() {
                return Err(rejected(
                    &app,
                    r,
                    Rejection::form(c.violations).into(),
                    &adv,
                ));
            }
            let created = app.with(|s| {
                let limit = s.config.guild_channel_limit;
                if s.guild_channel_count() >= limit {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        codes::MAX_GUILD_CHANNELS,
                        &format!("Maximum number of guild channels reached ({limit})"),
                    ));
                }
                if let Some(p) = &parent {
                    if let Some(e) = parent_error(s, p, None) {
                        return Err(e);
                    }
                }
                Ok(s.insert_channel(name.unwrap_or_default(), kind_, parent, ows, topic))
            });
            match created {
                Ok(ch) => {
                    tracing::debug!(channel_id = %ch.id, name = %ch.name, "channel created");
                    Ok(with_bucket(StatusCode::CREATED, &adv, ch.to_json()))
                }
                Err(e) => Err(rejected(&app, r, e, &adv)),
            }
        }
        .await,
    )
}

async fn get_channel(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(&app, &headers, route::GET_CHANNEL, &channel_id, true).await?;
            match app.with(|s| s.channels.get(&channel_id).cloned()) {
                Some(c) => Ok(with_bucket(StatusCode::OK, &adv, c.to_json())),
                None => Err(error_with_bucket(ApiError::unknown_channel(), &adv)),
            }
        }
        .await,
    )
}

async fn modify_channel(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = route::MODIFY_CHANNEL;
    unify(
        async {
            let adv = begin(&app, &headers, r, &channel_id, true).await?;
            let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
            let Some(obj) = v.as_object().cloned() else {
                return Err(rejected(
                    &app,
                    r,
                    form_error("_", "MODEL_TYPE_CONVERT", "Only dictionaries may be used"),
                    &adv,
                ));
            };
            let result = app.with(|s| -> Result<Value, ApiError> {
                let Some(current) = s.channels.get(&channel_id).cloned() else {
                    return Err(ApiError::unknown_channel());
                };
                let mut c = Checker::default();
                let name = channel_name(&mut c, &obj, current.kind, false);
                let thread = kind::is_thread(current.kind);
                let parent = match obj.get("parent_id") {
                    None => None,
                    Some(Value::Null) => Some(None),
                    Some(Value::String(p)) if is_snowflake(p) && !thread => Some(Some(p.clone())),
                    Some(_) => {
                        c.push(
                            vec!["parent_id".into()],
                            "CHANNEL_PARENT_INVALID",
                            "Invalid parent".into(),
                            "rest",
                        );
                        None
                    }
                };
                if current.kind == kind::CATEGORY && matches!(parent, Some(Some(_))) {
                    c.push(
                        vec!["parent_id".into()],
                        "CHANNEL_PARENT_INVALID_TYPE",
                        "Categories cannot have subcategories".into(),
                        "rest",
                    );
                }
                let ows = obj
                    .contains_key("permission_overwrites")
                    .then(|| overwrites(&mut c, obj.get("permission_overwrites")));
                for k in ["archived", "locked"] {
                    c.boolean(&obj, &[], k);
                }
                c.max_len(&obj, &[], "topic", 1024, "rest");
                if !c.violations.is_empty() {
                    return Err(Rejection::form(c.violations).into());
                }
                if let Some(Some(p)) = &parent {
                    if let Some(e) = parent_error(s, p, Some(&channel_id)) {
                        return Err(e);
                    }
                }
                let Some(ch) = s.channels.get_mut(&channel_id) else {
                    return Err(ApiError::unknown_channel());
                };
                if let Some(n) = name {
                    ch.name = n;
                }
                if let Some(p) = parent {
                    ch.parent_id = p;
                }
                if let Some(o) = ows {
                    ch.permission_overwrites = o;
                }
                if let Some(t) = obj.get("topic") {
                    ch.topic = t.as_str().map(str::to_owned);
                }
                if let Some(p) = obj.get("position").and_then(Value::as_i64) {
                    ch.position = p;
                }
                if thread {
                    if let Some(a) = obj.get("archived").and_then(Value::as_bool) {
                        ch.archived = a;
                    }
                    if let Some(l) = obj.get("locked").and_then(Value::as_bool) {
                        ch.locked = l;
                    }
                    if let Some(d) = obj.get("auto_archive_duration").and_then(Value::as_u64) {
                        ch.auto_archive_duration =
                            u32::try_from(d).unwrap_or(ch.auto_archive_duration);
                    }
                }
                Ok(ch.to_json())
            });
            result
                .map(|v| with_bucket(StatusCode::OK, &adv, v))
                .map_err(|e| rejected(&app, r, e, &adv))
        }
        .await,
    )
}

async fn delete_channel(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(&app, &headers, route::DELETE_CHANNEL, &channel_id, true).await?;
            match app.with(|s| s.remove_channel(&channel_id)) {
                Some(c) => Ok(with_bucket(StatusCode::OK, &adv, c.to_json())),
                None => Err(error_with_bucket(ApiError::unknown_channel(), &adv)),
            }
        }
        .await,
    )
}

async fn create_webhook(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = route::CREATE_WEBHOOK;
    unify(async {
        let adv = begin(&app, &headers, r, &channel_id, true).await?;
        let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
        let obj = v.as_object().cloned().unwrap_or_default();
        let mut c = Checker::default();
        let n = c.required_len(&obj, &[], "name", limits::WEBHOOK_NAME, "rest");
        let name = obj.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        let lower = name.to_lowercase();
        if n > 0 && (lower.contains("clyde") || lower.contains("discord")) {
            c.push(vec!["name".into()], "WEBHOOK_INVALID_NAME", "Webhook names cannot contain \"clyde\" or \"discord\"".into(), "rest");
        }
        if !c.violations.is_empty() {
            return Err(rejected(&app, r, Rejection::form(c.violations).into(), &adv));
        }
        let created = app.with(|s| {
            let Some(ch) = s.channels.get(&channel_id) else {
                return Err(ApiError::unknown_channel());
            };
            if !matches!(ch.kind, kind::TEXT | kind::FORUM) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    50024,
                    "Cannot execute action on this channel type",
                ));
            }
            if s.channel_webhooks(&channel_id) >= limits::WEBHOOKS_PER_CHANNEL {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    codes::MAX_WEBHOOKS,
                    "Maximum number of webhooks reached (15)",
                ));
            }
            Ok(s.insert_webhook(&channel_id, &name))
        });
        match created {
            Ok(w) => {
                tracing::debug!(webhook_id = %w.id, channel_id = %channel_id, "webhook created");
                Ok(with_bucket(StatusCode::OK, &adv, w.to_json()))
            }
            Err(e) => Err(rejected(&app, r, e, &adv)),
        }
    }
    .await)
}

async fn list_channel_webhooks(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(
                &app,
                &headers,
                route::LIST_CHANNEL_WEBHOOKS,
                &channel_id,
                true,
            )
            .await?;
            let list = app.with(|s| {
                s.channels.contains_key(&channel_id).then(|| {
                    s.webhooks
                        .values()
                        .filter(|w| !w.deleted && w.channel_id == channel_id)
                        .map(|w| w.to_json())
                        .collect::<Vec<_>>()
                })
            });
            match list {
                Some(l) => Ok(with_bucket(StatusCode::OK, &adv, Value::Array(l))),
                None => Err(error_with_bucket(ApiError::unknown_channel(), &adv)),
            }
        }
        .await,
    )
}

async fn get_webhook(
    AxumState(app): AxumState<App>,
    Path(webhook_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(&app, &headers, route::GET_WEBHOOK, &webhook_id, true).await?;
            match app.with(|s| s.webhooks.get(&webhook_id).filter(|w| !w.deleted).cloned()) {
                Some(w) => Ok(with_bucket(StatusCode::OK, &adv, w.to_json())),
                None => Err(error_with_bucket(ApiError::unknown_webhook(), &adv)),
            }
        }
        .await,
    )
}

async fn delete_webhook(
    AxumState(app): AxumState<App>,
    Path(webhook_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(
        async {
            let adv = begin(&app, &headers, route::DELETE_WEBHOOK, &webhook_id, true).await?;
            if app.with(|s| s.delete_webhook(&webhook_id)) {
                tracing::debug!(webhook_id = %webhook_id, "webhook deleted");
                Ok((StatusCode::NO_CONTENT, adv.headers()).into_response())
            } else {
                Err(error_with_bucket(ApiError::unknown_webhook(), &adv))
            }
        }
        .await,
    )
}

async fn create_thread(
    AxumState(app): AxumState<App>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = route::CREATE_THREAD;
    unify(
        async {
            let adv = begin(&app, &headers, r, &channel_id, true).await?;
            let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
            let obj = v.as_object().cloned().unwrap_or_default();
            let mut c = Checker::default();
            c.required_len(&obj, &[], "name", limits::CHANNEL_NAME, "rest");
            // Without a starter message Discord defaults to a private thread.
            let kind_ = match obj.get("type") {
                None | Some(Value::Null) => kind::PRIVATE_THREAD,
                Some(t) => match t.as_u64().and_then(|t| u8::try_from(t).ok()) {
                    Some(t @ (kind::PUBLIC_THREAD | kind::PRIVATE_THREAD)) => t,
                    _ => {
                        c.push(
                            vec!["type".into()],
                            "BASE_TYPE_CHOICES",
                            "Value must be one of (11, 12).".into(),
                            "rest",
                        );
                        kind::PUBLIC_THREAD
                    }
                },
            };
            let archive = match obj.get("auto_archive_duration") {
                None | Some(Value::Null) => 4320,
                Some(d) => match d.as_u64() {
                    Some(d @ (60 | 1440 | 4320 | 10080)) => u32::try_from(d).unwrap_or(4320),
                    _ => {
                        c.push(
                            vec!["auto_archive_duration".into()],
                            "BASE_TYPE_CHOICES",
                            "Value must be one of (60, 1440, 4320, 10080).".into(),
                            "rest",
                        );
                        4320
                    }
                },
            };
            if !c.violations.is_empty() {
                return Err(rejected(
                    &app,
                    r,
                    Rejection::form(c.violations).into(),
                    &adv,
                ));
            }
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let created = app.with(|s| {
                let Some(parent) = s.channels.get(&channel_id) else {
                    return Err(ApiError::unknown_channel());
                };
                if parent.kind != kind::TEXT {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        50024,
                        "Cannot execute action on this channel type",
                    ));
                }
                let mut t =
                    s.insert_channel(name, kind_, Some(channel_id.clone()), Vec::new(), None);
                t.auto_archive_duration = archive;
                s.channels.insert(t.id.clone(), t.clone());
                Ok(t)
            });
            match created {
                Ok(t) => Ok(with_bucket(StatusCode::CREATED, &adv, t.to_json())),
                Err(e) => Err(rejected(&app, r, e, &adv)),
            }
        }
        .await,
    )
}

/// Checks a bulk command overwrite body.
fn check_commands(v: &Value) -> Result<Vec<Value>, ApiError> {
    let Some(list) = v.as_array() else {
        return Err(form_error(
            "_",
            "BASE_TYPE_LIST",
            "Only iterables may be used in a ListType",
        ));
    };
    let mut c = Checker::default();
    if list.len() > limits::COMMANDS {
        c.push(
            vec![],
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {} or fewer in length.", limits::COMMANDS),
            "rest",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, cmd) in list.iter().enumerate() {
        let idx = i.to_string();
        let Some(o) = cmd.as_object() else {
            c.push(
                vec![idx],
                "MODEL_TYPE_CONVERT",
                "Only dictionaries may be used in a ModelType".into(),
                "rest",
            );
            continue;
        };
        let ty = o.get("type").and_then(Value::as_u64).unwrap_or(1);
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        if ty == 1 && !validate::command_name(name) {
            c.push(
                vec![idx.clone(), "name".into()],
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid".into(),
                "rest",
            );
        }
        if !seen.insert((ty, name.to_owned())) {
            c.push(
                vec![idx.clone(), "name".into()],
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                "Application command names must be unique".into(),
                "rest",
            );
        }
        // A permission bit set as a decimal string, or null (everyone).
        if let Some(p) = o.get("default_member_permissions").filter(|p| !p.is_null()) {
            if p.as_str().is_none_or(|s| s.parse::<u64>().is_err()) {
                c.push(
                    vec![idx.clone(), "default_member_permissions".into()],
                    "BASE_TYPE_BAD_INT",
                    "Value is not a valid permissions bit set.".into(),
                    "rest",
                );
            }
        }
        if ty == 1 {
            c.required_len(
                o,
                &[idx.as_str()],
                "description",
                limits::COMMAND_DESCRIPTION,
                "rest",
            );
        }
        if let Some(opts) = c.array(
            o,
            &[idx.as_str()],
            "options",
            limits::COMMAND_OPTIONS,
            "rest",
        ) {
            for (j, opt) in opts.iter().enumerate() {
                let jdx = j.to_string();
                let at = [idx.as_str(), "options", jdx.as_str()];
                let Some(opt) = opt.as_object() else { continue };
                if !opt
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(validate::command_name)
                {
                    c.push(
                        at.iter()
                            .map(|s| (*s).to_owned())
                            .chain(["name".to_owned()])
                            .collect(),
                        "APPLICATION_COMMAND_INVALID_NAME",
                        "Option name is invalid".into(),
                        "rest",
                    );
                }
                c.required_len(opt, &at, "description", limits::COMMAND_DESCRIPTION, "rest");
                if !opt
                    .get("type")
                    .and_then(Value::as_u64)
                    .is_some_and(|t| (1..=11).contains(&t))
                {
                    c.push(
                        at.iter()
                            .map(|s| (*s).to_owned())
                            .chain(["type".to_owned()])
                            .collect(),
                        "BASE_TYPE_CHOICES",
                        "Value must be one of 1..11.".into(),
                        "rest",
                    );
                }
            }
        }
    }
    if c.violations.is_empty() {
        Ok(list.clone())
    } else {
        Err(Rejection::form(c.violations).into())
    }
}

async fn put_commands(
    app: App,
    headers: HeaderMap,
    body: Bytes,
    application_id: String,
    guild_id: Option<String>,
) -> Handled {
    let (r, major) = match &guild_id {
        Some(g) => (route::GUILD_COMMANDS, g.clone()),
        None => (route::GLOBAL_COMMANDS, application_id.clone()),
    };
    let adv = begin(&app, &headers, r, &major, true).await?;
    if let Some(g) = &guild_id {
        check_guild(&app, g).map_err(|e| error_with_bucket(e, &adv))?;
    }
    let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
    let list = check_commands(&v).map_err(|e| rejected(&app, r, e, &adv))?;
    let echoed = app.with(|s| s.put_commands(&application_id, guild_id.as_deref(), &list));
    Ok(with_bucket(StatusCode::OK, &adv, Value::Array(echoed)))
}

async fn get_commands(
    app: App,
    headers: HeaderMap,
    application_id: String,
    guild_id: Option<String>,
) -> Handled {
    let (r, major) = match &guild_id {
        Some(g) => (route::GET_GUILD_COMMANDS, g.clone()),
        None => (route::GET_GLOBAL_COMMANDS, application_id.clone()),
    };
    let adv = begin(&app, &headers, r, &major, true).await?;
    let list = app.with(|s| {
        s.commands
            .get(&(application_id, guild_id))
            .cloned()
            .unwrap_or_default()
    });
    Ok(with_bucket(StatusCode::OK, &adv, Value::Array(list)))
}

async fn put_guild_commands(
    AxumState(app): AxumState<App>,
    Path((application_id, guild_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unify(put_commands(app, headers, body, application_id, Some(guild_id)).await)
}

async fn put_global_commands(
    AxumState(app): AxumState<App>,
    Path(application_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unify(put_commands(app, headers, body, application_id, None).await)
}

async fn get_guild_commands(
    AxumState(app): AxumState<App>,
    Path((application_id, guild_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    unify(get_commands(app, headers, application_id, Some(guild_id)).await)
}

async fn get_global_commands(
    AxumState(app): AxumState<App>,
    Path(application_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    unify(get_commands(app, headers, application_id, None).await)
}

/// `PATCH /webhooks/{application_id}/{interaction_token}/messages/@original`:
/// no bot token (the interaction token authenticates), not in the global limit.
async fn edit_original(
    AxumState(app): AxumState<App>,
    Path((application_id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let r = route::EDIT_ORIGINAL_RESPONSE;
    unify(
        async {
            if let FaultOutcome::Respond(resp) = serve_fault(&app, r, None, |_| None).await {
                return Err(resp);
            }
            let now = Instant::now();
            let adv = app.with(|s| {
                *s.stats.rest_requests.entry(r.to_owned()).or_default() += 1;
                s.webhook_bucket(&format!("interaction:{application_id}"), now)
            });
            let v = json_body(&body).map_err(|e| rejected(&app, r, e, &adv))?;
            validate::edit_message(&v).map_err(|e| rejected(&app, r, e.into(), &adv))?;
            let edit = app.with(|s| {
                let edit = InteractionEdit {
                    seq: s.next_seq(),
                    application_id: application_id.clone(),
                    interaction_token: token.clone(),
                    received_at_unix_ms: crate::state::unix_ms(),
                    received_at_mono_ms: s.mono_ms(now),
                    body: v.clone(),
                };
                s.stats.interaction_edits += 1;
                s.edits.push(edit.clone());
                (edit, s.snowflake())
            });
            app.recorded.notify_waiters();
            let (edit, id) = edit;
            Ok(with_bucket(
                StatusCode::OK,
                &adv,
                json!({
                    "id": id,
                    "type": 20,
                    "application_id": edit.application_id,
                    "content": v.get("content").and_then(Value::as_str).unwrap_or(""),
                    "embeds": v.get("embeds").cloned().unwrap_or(json!([])),
                    "flags": v.get("flags").cloned().unwrap_or(json!(0)),
                    "timestamp": crate::state::rfc3339(edit.received_at_unix_ms),
                    "edited_timestamp": crate::state::rfc3339(edit.received_at_unix_ms),
                }),
            ))
        }
        .await,
    )
}
