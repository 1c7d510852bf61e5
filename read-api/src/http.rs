//! The HTTP/JSON face (axum) over the same [`ReadQueries`], with Server-Sent Events for live push
//! and Prometheus metrics.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/rooms/{room_id}` | room summary |
//! | `GET /v1/rooms/{room_id}/messages?cursor=&page_size=` | a page of messages, newest first |
//! | `GET /v1/rooms/{room_id}/live?after_version=` | SSE: one `update` event per change (`id` = version; `Last-Event-ID` resumes) |
//! | `GET /v1/members/{user_id}/rooms?limit=` | the rooms a user is a member of |
//! | `GET /v1/projections/{projection}` | position, lag, dead letters, the updater's health (`dev`) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness: 503 while the views cannot be read or the updater here cannot commit (no credentials needed, no data) |
//!
//! Queries take `consistent_with=ROOM_ID:VERSION` (the pair every command reply carries) and
//! `timeout_ms`. Errors are `{"code": "NOT_FOUND", "message": "…"}` with the HTTP status
//! grpc-gateway gives the same gRPC code; a backend failure says only `internal error (id …)`
//! and adds `"error_id"` (also the `x-kiroku-error-id` header); a reached cap on consistency
//! waits or live streams is 429 with `Retry-After`. Every route but the probes needs
//! credentials, exactly as the gRPC services do.

use std::convert::Infallible;
use std::fmt::Write as _;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use kiroku_proto::auth::{Auth, Identity};
use kiroku_read_model_updater::{MessagePage, PROJECTIONS, ROOMS, RoomSummary};
use serde::Deserialize;
use tonic::metadata::MetadataMap;

use crate::error::ReadError;
use crate::live::LiveStreams;
use crate::query::{ConsistencyToken, ProjectionStatus, ReadQueries};

#[derive(Clone)]
struct AppState {
    queries: ReadQueries,
    live: LiveStreams,
}

pub fn router(queries: ReadQueries, live: LiveStreams, auth: Auth) -> Router {
    let state = AppState { queries, live };
    let api = Router::new()
        .route("/v1/rooms/{room_id}", get(room))
        .route("/v1/rooms/{room_id}/messages", get(messages))
        .route("/v1/rooms/{room_id}/live", get(live_room))
        .route("/v1/members/{user_id}/rooms", get(member_rooms))
        .route("/v1/projections/{projection}", get(projection))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(auth, authenticate));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "serving"})) }),
        )
        .route("/readyz", get(ready))
        .merge(api)
        .fallback(|| async {
            ReadError::NotFound("no such route; see the read API's routes in its docs".into())
        })
        .with_state(state)
}

async fn authenticate(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let metadata = MetadataMap::from_headers(request.headers().clone());
    match auth.authenticate(&metadata) {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        // The same code the gRPC face answers (a malformed dev principal header is
        // INVALID_ARGUMENT, missing or unknown credentials UNAUTHENTICATED).
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            ReadError::invalid(status.message()).into_response()
        }
        Err(status) => ReadError::Unauthenticated(status.message().to_owned()).into_response(),
    }
}

type Params<T> = Result<Query<T>, QueryRejection>;
type Id = Result<Path<String>, PathRejection>;

/// A path segment, or why it is not one (e.g. not UTF-8), as a JSON error like every other.
fn id(p: Id) -> Result<String, ReadError> {
    p.map(|Path(id)| id)
        .map_err(|e| ReadError::invalid(e.body_text()))
}

fn params<T>(p: Params<T>) -> Result<T, ReadError> {
    p.map(|Query(p)| p)
        .map_err(|e| ReadError::invalid(e.body_text()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomParams {
    consistent_with: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesParams {
    consistent_with: Option<String>,
    timeout_ms: Option<u64>,
    cursor: Option<String>,
    page_size: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberParams {
    consistent_with: Option<String>,
    timeout_ms: Option<u64>,
    limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveParams {
    after_version: Option<u64>,
}

/// `consistent_with=ROOM_ID:VERSION` and `timeout_ms`.
fn token(
    consistent_with: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<Option<ConsistencyToken>, ReadError> {
    let (id, version) = match consistent_with {
        None | Some("") => ("", 0),
        Some(s) => ConsistencyToken::split(s).ok_or_else(|| {
                ReadError::invalid(format!(
                    "consistent_with {s:?} is not ROOM_ID:VERSION (the room id and version a command reply gives)"
                ))
            })?,
    };
    ConsistencyToken::parse(id, version, timeout_ms.unwrap_or(0))
}

/// The caller, as [`authenticate`] found it.
type Who = Extension<Identity>;

async fn room(
    State(s): State<AppState>,
    Extension(who): Who,
    room_id: Id,
    p: Params<RoomParams>,
) -> Result<Json<RoomSummary>, ReadError> {
    let (room_id, p) = (id(room_id)?, params(p)?);
    let token = token(p.consistent_with.as_deref(), p.timeout_ms)?;
    let room = s
        .queries
        .room(&who.principal, &room_id, token.as_ref())
        .await?;
    Ok(Json(room))
}

async fn messages(
    State(s): State<AppState>,
    Extension(who): Who,
    room_id: Id,
    p: Params<MessagesParams>,
) -> Result<Json<MessagePage>, ReadError> {
    let (room_id, p) = (id(room_id)?, params(p)?);
    let token = token(p.consistent_with.as_deref(), p.timeout_ms)?;
    let page = s
        .queries
        .messages(
            &who.principal,
            &room_id,
            p.cursor.as_deref().unwrap_or(""),
            p.page_size.unwrap_or(0),
            token.as_ref(),
        )
        .await?;
    Ok(Json(page))
}

async fn member_rooms(
    State(s): State<AppState>,
    Extension(who): Who,
    user_id: Id,
    p: Params<MemberParams>,
) -> Result<Json<serde_json::Value>, ReadError> {
    let (user_id, p) = (id(user_id)?, params(p)?);
    let token = token(p.consistent_with.as_deref(), p.timeout_ms)?;
    let rooms = s
        .queries
        .member_rooms(
            &who.principal,
            &user_id,
            p.limit.unwrap_or(0),
            token.as_ref(),
        )
        .await?;
    Ok(Json(serde_json::json!({ "rooms": rooms })))
}

async fn projection(
    State(s): State<AppState>,
    projection: Id,
) -> Result<Json<ProjectionStatus>, ReadError> {
    Ok(Json(s.queries.status(&id(projection)?).await?))
}

async fn live_room(
    State(s): State<AppState>,
    Extension(who): Who,
    room_id: Id,
    headers: HeaderMap,
    p: Params<LiveParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ReadError> {
    let (room_id, p) = (id(room_id)?, params(p)?);
    // A reconnecting EventSource sends the id of the last event it received.
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ReadError::invalid("Last-Event-ID is not a room version"))?,
        ),
    };
    let after = resume.or(p.after_version).unwrap_or(0);
    let updates = s
        .live
        .watch_room(&s.queries, &who.principal, &room_id, after)
        .await?;
    let events = updates.map(|u| {
        let event = match u {
            Ok(u) => Event::default()
                .event("update")
                .id(u.version.to_string())
                .json_data(&u),
            // The same JSON as an error response (a backend failure as a fixed text and an id).
            Err(e) => Event::default().event("error").json_data(e.public()),
        };
        Ok(event.unwrap_or_else(|e| {
            let e = ReadError::Internal(format!("cannot encode a live update: {e}"));
            Event::default().event("error").data(e.public().message)
        }))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Ready when the views can be read and the updater in this process (if any) can commit. No
/// credentials are needed, so the answer says what is wrong in fixed words; the detail is in the
/// log (the updater logs each failure under the `error_id` given here).
async fn ready(State(s): State<AppState>) -> Response {
    let (message, error_id) = match s.queries.status(ROOMS).await {
        Ok(status) => match status.updater {
            Some(h) if !h.committing => (
                "not ready: the read-model updater cannot commit",
                h.last_failure.map(|f| f.error_id),
            ),
            _ => return Json(serde_json::json!({"status": "ready"})).into_response(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "read api: not ready: the views cannot be read");
            ("not ready: the views cannot be read", None)
        }
    };
    let body = serde_json::json!({"status": "not ready", "message": message, "error_id": error_id});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// How one gauge reads a projection's status (`None`: not known here).
type Gauge = fn(&ProjectionStatus) -> Option<f64>;

/// Prometheus text exposition of every projection's position, lag and dead letters.
async fn metrics(State(s): State<AppState>) -> Result<Response, ReadError> {
    let mut statuses = Vec::new();
    for p in PROJECTIONS {
        statuses.push(s.queries.status(p).await?);
    }
    let mut out = String::new();
    let gauges: [(&str, &str, Gauge); 6] = [
        (
            "kiroku_projection_position",
            "Journal global position the active version has applied.",
            |s| Some(s.position as f64),
        ),
        (
            "kiroku_projection_head",
            "Newest global position of the journal.",
            |s| s.head.map(|h| h as f64),
        ),
        (
            "kiroku_projection_lag_events",
            "Events committed to the journal and not yet applied.",
            |s| s.lag_events.map(|l| l as f64),
        ),
        (
            "kiroku_projection_lag_seconds",
            "Age of the newest applied event while events wait (0 when caught up).",
            |s| Some(s.lag_seconds),
        ),
        (
            "kiroku_projection_dead_letters",
            "Events parked because the projection failed on them.",
            |s| Some(s.dead_letters as f64),
        ),
        (
            "kiroku_projection_active_version",
            "Version of the projection's tables that serves queries.",
            |s| Some(s.active_version as f64),
        ),
    ];
    // The updater's health, where it runs in this process.
    let updater: [(&str, &str, &str, Gauge); 5] = [
        (
            "kiroku_updater_committing",
            "gauge",
            "1 while the read-model updater commits, 0 from a failed attempt until one succeeds.",
            |s| {
                s.updater
                    .as_ref()
                    .map(|h| f64::from(u8::from(h.committing)))
            },
        ),
        (
            "kiroku_updater_consecutive_failures",
            "gauge",
            "Failed attempts of the read-model updater since the last one that succeeded.",
            |s| {
                s.updater
                    .as_ref()
                    .map(|h| f64::from(h.consecutive_failures))
            },
        ),
        (
            "kiroku_updater_failing_seconds",
            "gauge",
            "How long the read-model updater has not been able to commit (0 while it commits).",
            |s| {
                let h = s.updater.as_ref()?;
                Some(h.failing_since_ms.map_or(0.0, |since| {
                    (crate::query::now_ms() - since).max(0) as f64 / 1000.0
                }))
            },
        ),
        (
            "kiroku_updater_transient_faults_total",
            "counter",
            "Transient faults the read-model updater retried (connection lost, lost races, busy store).",
            |s| s.updater.as_ref().map(|h| h.transient_faults as f64),
        ),
        (
            "kiroku_updater_restarts_total",
            "counter",
            "Restarts of the read-model updater after a failure that was not transient, or a panic.",
            |s| s.updater.as_ref().map(|h| h.restarts as f64),
        ),
    ];
    let gauges = gauges.map(|(name, help, value)| (name, "gauge", help, value));
    for (name, kind, help, value) in gauges.into_iter().chain(updater) {
        let values: Vec<_> = statuses
            .iter()
            .filter_map(|s| Some((&s.projection, value(s)?)))
            .collect();
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (projection, v) in values {
            let _ = writeln!(out, "{name}{{projection=\"{projection}\"}} {v}");
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_with_is_room_and_version() {
        let t = token(Some("lobby:7"), Some(100)).unwrap().unwrap();
        assert_eq!((t.aggregate_id.as_str(), t.version), ("lobby", 7));
        // Room ids may hold colons: the version is after the last one.
        let t = token(Some("a:b:3"), None).unwrap().unwrap();
        assert_eq!((t.aggregate_id.as_str(), t.version), ("a:b", 3));
        assert_eq!(token(None, None).unwrap(), None);
        for bad in ["lobby", "lobby:x", ":3x"] {
            let e = token(Some(bad), None).unwrap_err();
            assert_eq!(e.http_status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(token(Some("lobby:1"), Some(30_001)).is_err());
    }
}
