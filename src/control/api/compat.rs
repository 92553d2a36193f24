//! soup-transcoding-proxy's query-string API, so its users' scripts work unchanged:
//!
//! | route | native equivalent |
//! |---|---|
//! | `POST /api/add-token?type=http,rtp-udp&sessionid=ID&udp-clients=h:p,…` | `POST /api/v1/tokens` |
//! | `DELETE /api/revoke-token?sessionid=ID` | `DELETE /api/v1/tokens/{id}` |
//! | `GET /api/list-tokens` | `GET /api/v1/tokens` |
//! | `GET /api/list-streams` | `GET /api/v1/streams` |
//! | `DELETE /api/abort-stream?sessionid=ID` | `DELETE /api/v1/streams/{name}` |
//!
//! As in soup-transcoding-proxy, a compat session is authorised by its session id alone: anyone who knows
//! the id may push it. That is weaker than a native token (a 256-bit push key); a compat session maps to a
//! native one with `inputs: ["any"]`, `outputs.http` and `outputs.rtp_udp` from `type` and `udp-clients`, no
//! expiry and no view restriction, and shows as `origin: "compat"` in `GET /api/v1/tokens`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use time::OffsetDateTime;

use super::dto::{CompatOk, CompatStream, CompatToken};
use crate::control::tokens::{Origin, Outputs, Session};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::stream::registry as streams;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/add-token", post(add_token))
        .route("/api/revoke-token", delete(revoke_token))
        .route("/api/list-tokens", get(list_tokens))
        .route("/api/list-streams", get(list_streams))
        .route("/api/abort-stream", delete(abort_stream))
}

type Params = Query<HashMap<String, String>>;

fn session_id(q: &HashMap<String, String>) -> Result<String> {
    let id = q
        .get("sessionid")
        .ok_or_else(|| Error::bad_request("sessionid is required"))?;
    streams::validate_name(id)?;
    Ok(id.clone())
}

async fn add_token(State(app): State<Arc<AppState>>, Query(q): Params) -> Result<Json<CompatOk>> {
    let id = session_id(&q)?;
    let kinds: Vec<&str> = q
        .get("type")
        .map_or(vec!["http"], |t| t.split(',').map(str::trim).collect());
    let mut http = false;
    let mut rtp = false;
    for k in kinds {
        match k {
            "http" => http = true,
            "rtp-udp" => rtp = true,
            other => {
                return Err(Error::bad_request(format!(
                    "unknown type '{other}': use http, rtp-udp or both"
                )));
            }
        }
    }
    let clients: Vec<String> = q
        .get("udp-clients")
        .map(|c| {
            c.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if rtp && clients.is_empty() {
        return Err(Error::bad_request(
            "type rtp-udp needs udp-clients=host:port,...",
        ));
    }
    let session = Session {
        session_id: id.clone(),
        origin: Origin::Compat,
        inputs: vec!["any".into()],
        outputs: Outputs {
            http,
            rtp_udp: if rtp {
                super::parse_rtp_targets(&app, &clients)?
            } else {
                Vec::new()
            },
        },
        expires_at: None,
        created_at: OffsetDateTime::now_utc(),
        push_key_sha256: None,
        view_key_sha256: None,
    };
    super::store_add(&app, session).await?;
    tracing::info!(session = %id, "compat session added (authorised by its id alone)");
    Ok(Json(CompatOk {
        sessionid: id,
        status: "added",
    }))
}

async fn revoke_token(
    State(app): State<Arc<AppState>>,
    Query(q): Params,
) -> Result<Json<CompatOk>> {
    let id = session_id(&q)?;
    super::store_revoke(&app, &id).await?;
    Ok(Json(CompatOk {
        sessionid: id,
        status: "revoked",
    }))
}

/// One entry per UDP client, or one with no host/port for a session without any.
async fn list_tokens(State(app): State<Arc<AppState>>) -> Json<Vec<CompatToken>> {
    let mut out = Vec::new();
    for s in app.tokens.list() {
        if s.outputs.rtp_udp.is_empty() {
            out.push(CompatToken {
                sessionid: s.session_id.clone(),
                host: None,
                port: None,
            });
        }
        for t in &s.outputs.rtp_udp {
            out.push(CompatToken {
                sessionid: s.session_id.clone(),
                host: Some(t.ip().to_string()),
                port: Some(t.port()),
            });
        }
    }
    Json(out)
}

async fn list_streams(State(app): State<Arc<AppState>>) -> Json<Vec<CompatStream>> {
    Json(
        app.registry
            .list()
            .iter()
            .map(|e| CompatStream {
                sessionid: e.name.clone(),
                mode: e.mode(),
                clients: e.hub.client_count(),
            })
            .collect(),
    )
}

async fn abort_stream(
    State(app): State<Arc<AppState>>,
    Query(q): Params,
) -> Result<Json<CompatOk>> {
    let id = session_id(&q)?;
    let e = app
        .registry
        .get(&id)
        .ok_or_else(|| Error::not_found(format!("no live stream '{id}'")))?;
    e.abort.cancel();
    Ok(Json(CompatOk {
        sessionid: id,
        status: "aborted",
    }))
}
