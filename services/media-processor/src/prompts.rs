//! Named prompts: text rendered by TTS, or uploaded audio (WAV or MP3),
//! kept in media-processor's database so every instance plays the same.
//!
//! - Audio is decoded and resampled to 8 kHz once, at upload, and stored
//!   as a WAV (at most [`MAX_PROMPT_SECONDS`]).
//! - Text without lead fields is rendered at creation and stored like an
//!   upload (no TTS on the call path); text with fields (`Hello
//!   {first_name}`) is kept as text and rendered per call, through the TTS
//!   cache.
//! - The flow refers to a prompt by id; a deleted prompt is skipped (and
//!   logged) by calls that still name it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dialstack_common::auth::{roles, Principal, Role};
use dialstack_common::db::Db;
use dialstack_common::http::{ApiError, ApiJson, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::Row;
use utoipa::ToSchema;

use crate::ai::tts::{Tts, TtsRequest};
use crate::call::ivr::{PromptAudio, PromptSource};

/// Longest prompt (s).
pub const MAX_PROMPT_SECONDS: usize = 300;
/// Largest upload (bytes): five minutes of 16-bit 48 kHz stereo is
/// bigger, but no telephone prompt needs that; MP3s are far smaller.
pub const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Who may write prompts.
pub const WRITE: &[Role] = &[Role::Admin, Role::Supervisor];
/// Who may read them.
pub const READ: &[Role] = &[Role::Admin, Role::Supervisor, Role::Service];

/// A prompt as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Prompt {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `text` (rendered per call, it has lead fields), `audio` (stored
    /// 8 kHz audio: uploaded, or text rendered once).
    pub kind: String,
    /// The text, for text prompts (also kept for rendered ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// TTS voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// TTS words per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u16>,
    /// Length of the stored audio (ms; for text prompts, with the fields
    /// left empty).
    pub duration_ms: u64,
    /// SHA-256 of the stored audio (hex), or of the text.
    pub sha256: String,
    /// Who created it.
    pub created_by: String,
    /// When (ms since the epoch).
    pub created_at: i64,
}

/// `POST /v1/prompts` with a JSON body: a text prompt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTextPrompt {
    /// Unique name (1-100 characters).
    pub name: String,
    /// The text; `{field}` placeholders are filled from the lead per call.
    pub text: String,
    /// TTS voice (`en-us` by default).
    #[serde(default)]
    pub voice: Option<String>,
    /// Words per minute (80-450; 160 by default).
    #[serde(default)]
    pub rate: Option<u16>,
}

/// `?name=` of an audio upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Unique name.
    pub name: Option<String>,
}

/// The prompt store.
#[derive(Clone)]
pub struct PromptRepo {
    /// The database.
    pub db: Db,
    cache: Arc<std::sync::Mutex<BTreeMap<String, (std::time::Instant, PromptAudio)>>>,
}

/// How long a loaded prompt is kept in memory (a deletion is seen after
/// at most this long).
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most prompts kept in memory.
const CACHE_MAX: usize = 256;

impl PromptRepo {
    /// The store in `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            cache: Arc::default(),
        }
    }

    async fn insert(&self, p: &Prompt, audio: Option<&[u8]>) -> Result<(), ApiError> {
        let r = sqlx::query(
            "INSERT INTO prompts (id, name, kind, text, voice, rate, audio, duration_ms, sha256, created_by, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.kind)
        .bind(&p.text)
        .bind(&p.voice)
        .bind(p.rate.map(i64::from))
        .bind(audio)
        .bind(p.duration_ms as i64)
        .bind(&p.sha256)
        .bind(&p.created_by)
        .bind(p.created_at)
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("name: a prompt named '{}' exists", p.name),
            )),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Prompt, sqlx::Error> {
        Ok(Prompt {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            kind: r.try_get("kind")?,
            text: dialstack_common::db::text_column(r, "text")?,
            voice: r.try_get("voice")?,
            rate: r
                .try_get::<Option<i64>, _>("rate")?
                .and_then(|v| u16::try_from(v).ok()),
            duration_ms: r.try_get::<i64, _>("duration_ms")?.max(0) as u64,
            sha256: r.try_get("sha256")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        })
    }

    const COLUMNS: &'static str =
        "id, name, kind, text, voice, rate, duration_ms, sha256, created_by, created_at";

    /// Every prompt, by name.
    pub async fn list(&self) -> Result<Vec<Prompt>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM prompts ORDER BY name LIMIT 1000",
            Self::COLUMNS
        ))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(Self::from_row).collect()
    }

    /// One prompt.
    pub async fn get(&self, id: &str) -> Result<Option<Prompt>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM prompts WHERE id = ?",
            Self::COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(Self::from_row).transpose()
    }

    /// The stored audio (WAV bytes) of a prompt.
    pub async fn audio(&self, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let row = sqlx::query("SELECT audio FROM prompts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        match row {
            Some(r) => r.try_get::<Option<Vec<u8>>, _>("audio"),
            None => Ok(None),
        }
    }

    /// Deletes a prompt; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM prompts WHERE id = ?")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        self.lock().remove(id);
        Ok(done.rows_affected() > 0)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (std::time::Instant, PromptAudio)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE")
                || d.message().contains("Duplicate")
        }
        _ => false,
    }
}

#[async_trait::async_trait]
impl PromptSource for PromptRepo {
    async fn load(&self, id: &str) -> anyhow::Result<Option<PromptAudio>> {
        if let Some((at, p)) = self.lock().get(id) {
            if at.elapsed() < CACHE_TTL {
                return Ok(Some(p.clone()));
            }
        }
        let Some(p) = self.get(id).await? else {
            return Ok(None);
        };
        let audio = if p.kind == "text" {
            PromptAudio::Text {
                text: p.text.unwrap_or_default(),
                voice: p.voice.unwrap_or_else(|| "en-us".to_owned()),
                rate: p.rate.unwrap_or(160),
            }
        } else {
            let Some(bytes) = self.audio(id).await? else {
                return Ok(None);
            };
            let pcm =
                tokio::task::spawn_blocking(move || crate::ai::audio::decode(&bytes)).await??;
            PromptAudio::Pcm(Arc::new(pcm))
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), (std::time::Instant::now(), audio.clone()));
        Ok(Some(audio))
    }
}

/// What the prompt handlers need.
#[derive(Clone)]
pub struct PromptState {
    /// The store.
    pub repo: PromptRepo,
    /// TTS (`None`: text prompts are refused with 503).
    pub tts: Option<Arc<Tts>>,
}

/// The prompt routes (auth is layered by the caller).
pub fn router(state: PromptState) -> Router {
    Router::new()
        .route(
            "/v1/prompts",
            get(list)
                .route_layer(roles(READ))
                .merge(axum::routing::post(create).route_layer(roles(WRITE))),
        )
        .route(
            "/v1/prompts/{id}",
            get(get_one)
                .route_layer(roles(READ))
                .merge(axum::routing::delete(delete).route_layer(roles(WRITE))),
        )
        .route(
            "/v1/prompts/{id}/audio",
            get(get_audio).route_layer(roles(READ)),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(state)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must be 1-100 characters without control characters",
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn has_fields(text: &str) -> bool {
    text.replace("{{", "").contains('{')
}

/// Creates a prompt: `application/json` ([`NewTextPrompt`]) for text, or
/// the audio itself (`audio/wav`, `audio/mpeg`, ...) with `?name=`.
#[utoipa::path(post, path = "/v1/prompts", security(("bearer" = [])),
    request_body(content = NewTextPrompt, description = "a text prompt (JSON), or a WAV/MP3 file as the body with ?name="),
    params(("name" = Option<String>, Query, description = "name of an uploaded audio prompt")),
    responses((status = 201, body = Prompt), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn create(
    State(state): State<PromptState>,
    who: Principal,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, ApiJson<Prompt>), ApiError> {
    who.require(WRITE)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let now = dialstack_common::now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    if ctype.starts_with("application/json") {
        if q.name.is_some() {
            return Err(ApiError::invalid("name", "give the name in the JSON body"));
        }
        let req: NewTextPrompt = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("body: {e}")))?;
        check_name(&req.name)?;
        dialstack_contract::ivr::check_template("text", &req.text)
            .map_err(|e| ApiError::invalid("text", e.reason))?;
        if req.text.trim().is_empty()
            || req.text.chars().count() > dialstack_contract::ivr::MAX_PROMPT_TEXT
        {
            return Err(ApiError::invalid(
                "text",
                format!(
                    "must be 1-{} characters",
                    dialstack_contract::ivr::MAX_PROMPT_TEXT
                ),
            ));
        }
        let voice = req.voice.clone().unwrap_or_else(|| "en-us".to_owned());
        if !dialstack_contract::ivr::valid_voice(&voice) {
            return Err(ApiError::invalid(
                "voice",
                "must be 1-40 of letters, digits and +-_",
            ));
        }
        let rate = req.rate.unwrap_or(160);
        if !(80..=450).contains(&rate) {
            return Err(ApiError::invalid("rate", "must be 80-450 words per minute"));
        }
        let tts = state.tts.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "text to speech is not available in this process",
            )
        })?;
        // Rendered now either way: a voice the engine does not have is a
        // 400 at creation, not a silent call later.
        let fields = has_fields(&req.text);
        let sample = dialstack_contract::ivr::render_template(&req.text, &BTreeMap::new());
        let rendered = tts
            .render(&TtsRequest {
                text: sample,
                voice: voice.clone(),
                rate_wpm: rate,
            })
            .await
            .map_err(|e| ApiError::invalid("text", format!("text to speech failed: {e}")))?;
        let wav = crate::ai::audio::wav_8k(&rendered.pcm);
        let prompt = Prompt {
            id,
            name: req.name,
            kind: if fields { "text" } else { "audio" }.to_owned(),
            text: Some(req.text.clone()),
            voice: Some(voice),
            rate: Some(rate),
            duration_ms: rendered.pcm.len() as u64 / 8,
            sha256: if fields {
                hex(&sha2::Sha256::digest(req.text.as_bytes()))
            } else {
                hex(&sha2::Sha256::digest(&wav))
            },
            created_by: who.sub.clone(),
            created_at: now,
        };
        let audio = (!fields).then_some(wav.as_slice());
        state.repo.insert(&prompt, audio).await?;
        return Ok((StatusCode::CREATED, ApiJson(prompt)));
    }
    let name = q
        .name
        .ok_or_else(|| ApiError::invalid("name", "an audio upload needs ?name="))?;
    check_name(&name)?;
    if body.is_empty() {
        return Err(ApiError::invalid("body", "the audio file is empty"));
    }
    // Decoding (and resampling) minutes of audio is CPU work: off the
    // async workers.
    let pcm = tokio::task::spawn_blocking(move || crate::ai::audio::decode(&body))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::invalid("body", e))?;
    if pcm.len() > MAX_PROMPT_SECONDS * 8_000 {
        return Err(ApiError::invalid(
            "body",
            format!("audio is longer than {MAX_PROMPT_SECONDS} s"),
        ));
    }
    if pcm.is_empty() {
        return Err(ApiError::invalid("body", "the audio has no samples"));
    }
    let wav = crate::ai::audio::wav_8k(&pcm);
    let prompt = Prompt {
        id,
        name,
        kind: "audio".to_owned(),
        text: None,
        voice: None,
        rate: None,
        duration_ms: pcm.len() as u64 / 8,
        sha256: hex(&sha2::Sha256::digest(&wav)),
        created_by: who.sub.clone(),
        created_at: now,
    };
    state.repo.insert(&prompt, Some(&wav)).await?;
    Ok((StatusCode::CREATED, ApiJson(prompt)))
}

/// Every prompt.
#[utoipa::path(get, path = "/v1/prompts", security(("bearer" = [])),
    responses((status = 200, body = Vec<Prompt>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<PromptState>,
    who: Principal,
) -> Result<ApiJson<Vec<Prompt>>, ApiError> {
    who.require(READ)?;
    Ok(ApiJson(
        state.repo.list().await.map_err(ApiError::internal)?,
    ))
}

/// One prompt.
#[utoipa::path(get, path = "/v1/prompts/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "prompt id")),
    responses((status = 200, body = Prompt), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<PromptState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<ApiJson<Prompt>, ApiError> {
    who.require(READ)?;
    state
        .repo
        .get(&id)
        .await
        .map_err(ApiError::internal)?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("prompt"))
}

/// Deletes a prompt.
#[utoipa::path(delete, path = "/v1/prompts/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "prompt id")),
    responses((status = 204), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<PromptState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require(WRITE)?;
    if state.repo.delete(&id).await.map_err(ApiError::internal)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("prompt"))
    }
}

/// The prompt's audio as an 8 kHz WAV; a text prompt is rendered with the
/// query's parameters as lead fields (`?first_name=Ann`).
#[utoipa::path(get, path = "/v1/prompts/{id}/audio", security(("bearer" = [])),
    params(("id" = String, Path, description = "prompt id")),
    responses((status = 200, content_type = "audio/wav", body = Vec<u8>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_audio(
    State(state): State<PromptState>,
    who: Principal,
    Path(id): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    who.require(READ)?;
    let prompt = state
        .repo
        .get(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("prompt"))?;
    let wav = if prompt.kind == "text" {
        let tts = state.tts.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "text to speech is not available in this process",
            )
        })?;
        if fields.len() > dialstack_contract::MAX_DIAL_FIELDS {
            return Err(ApiError::invalid("query", "too many fields"));
        }
        let text =
            dialstack_contract::ivr::render_template(prompt.text.as_deref().unwrap_or(""), &fields);
        let r = tts
            .render(&TtsRequest {
                text,
                voice: prompt.voice.unwrap_or_else(|| "en-us".to_owned()),
                rate_wpm: prompt.rate.unwrap_or(160),
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("text to speech failed: {e}"),
                )
            })?;
        crate::ai::audio::wav_8k(&r.pcm)
    } else {
        state
            .repo
            .audio(&id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found("prompt"))?
    };
    Ok(([(header::CONTENT_TYPE, "audio/wav")], wav).into_response())
}
