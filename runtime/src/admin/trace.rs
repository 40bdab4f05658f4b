//! `GET /api/trace/{id}`: an event's story (`story`) — this host's attempts at it with what
//! Redis and ClickHouse hold. 400 for an id of no known form, 404 when nothing knows it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::{AdminState, Answer, error, internal};
use crate::story::{Stores, classify};

pub(super) async fn trace(State(s): State<Arc<AdminState>>, Path(id): Path<String>) -> Answer {
    classify(&id).map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let mut conn = s.redis()?;
    let queues = crate::trace::queues();
    let stores = Stores { redis: &mut conn, clickhouse: Some(&s.clickhouse), stream_prefix: &s.stream_prefix, queues };
    let found = crate::story::trace(&id, stores).await.map_err(internal)?;
    if found.matches.is_empty() {
        return Err(error(StatusCode::NOT_FOUND, crate::story::not_found(&id, queues)));
    }
    Ok(Json(found).into_response())
}
