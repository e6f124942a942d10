//! HTTP scaffolding shared by every service: the `{"code","message","request_id"}`
//! error envelope, request ids, one trace span and RED metrics per request, a
//! timeout, health and readiness, `/metrics`, `/openapi.json`, and serving with
//! graceful shutdown.
//!
//! Handlers return `Result<_, ApiError>`. Anything else that produces an error
//! status without a JSON body (an unknown route, a wrong method, a rejected
//! extractor, a timeout) is rewritten into the same envelope by the middleware,
//! so a client only ever sees one error shape.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The request id of the request being served, if any.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The error codes a client can see, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not the JSON the route expects.
    InvalidJson,
    /// A field failed validation.
    InvalidRequest,
    /// No valid token.
    Unauthorized,
    /// A valid token whose role may not do this.
    Forbidden,
    /// No such resource (also used to hide what a caller may not see).
    NotFound,
    /// The method is not served on this route.
    MethodNotAllowed,
    /// The resource is not in a state that allows this.
    Conflict,
    /// `If-Match` names a version that is no longer the resource's.
    PreconditionFailed,
    /// The route needs `If-Match` and the request has none.
    PreconditionRequired,
    /// Too many requests; retry later.
    RateLimited,
    /// The request took longer than the server allows.
    Timeout,
    /// A `Range` that does not overlap the resource (the response carries
    /// `Content-Range: bytes */<size>`).
    RangeNotSatisfiable,
    /// A dependency is down.
    Unavailable,
    /// A bug or an unexpected failure; details are only logged.
    Internal,
}

impl ErrorCode {
    /// The HTTP status of this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable string clients match on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PreconditionFailed => "precondition_failed",
            Self::PreconditionRequired => "precondition_required",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 | 415 | 422 => Self::InvalidRequest,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            408 => Self::Timeout,
            409 => Self::Conflict,
            412 => Self::PreconditionFailed,
            428 => Self::PreconditionRequired,
            416 => Self::RangeNotSatisfiable,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// The error every handler returns.
#[derive(Debug)]
pub struct ApiError {
    /// What kind of failure, and so which status.
    pub code: ErrorCode,
    /// A message safe to show to the client.
    pub message: String,
    source: Option<anyhow::Error>,
}

impl ApiError {
    /// An error with a client-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// A 400 naming the field at fault.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidRequest, format!("{field}: {why}"))
    }

    /// A 404.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// A 500 whose cause is logged, never sent.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            source: Some(err.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request id, also in the `x-request-id` header.
    pub request_id: String,
}

fn envelope(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        code: code.to_owned(),
        message,
        request_id: current_request_id(),
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(src) = &self.source {
            tracing::error!(error = ?src, code = self.code.as_str(), "request failed");
        }
        envelope(self.code.status(), self.code.as_str(), self.message)
    }
}

/// A JSON body whose rejection is an [`ApiError`] with code `invalid_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rej) => Err(ApiError::new(ErrorCode::InvalidJson, rej.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// A query string whose rejection is an [`ApiError`] with code `invalid_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rej) => Err(ApiError::new(ErrorCode::InvalidRequest, rej.body_text())),
        }
    }
}

/// Something `/health/ready` asks before it says ready.
#[async_trait::async_trait]
pub trait ReadyCheck: Send + Sync {
    /// A short name shown when the check fails.
    fn name(&self) -> &str;
    /// `Ok` when the dependency answers.
    async fn check(&self) -> Result<(), String>;
}

/// The readiness of one service: every registered check passes and the
/// service is not draining.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::RwLock<Vec<Arc<dyn ReadyCheck>>>>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Adds a check.
    pub fn add(&self, check: Arc<dyn ReadyCheck>) {
        if let Ok(mut checks) = self.checks.write() {
            checks.push(check);
        }
    }

    /// Marks the service as draining: ready answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Names of failing checks; empty when ready.
    pub async fn failing(&self) -> Vec<String> {
        let mut failing = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            failing.push("draining".to_owned());
        }
        let checks: Vec<_> = self.checks.read().map(|c| c.clone()).unwrap_or_default();
        for c in checks {
            if let Err(e) = c.check().await {
                failing.push(format!("{}: {e}", c.name()));
            }
        }
        failing
    }
}

/// What the shared routes and middleware need.
#[derive(Clone)]
pub struct HttpContext {
    /// The service's metrics registry.
    pub metrics: Metrics,
    /// The service's readiness.
    pub readiness: Readiness,
    /// The OpenAPI document served on `/openapi.json`.
    pub openapi: Arc<serde_json::Value>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Routes (matched path templates) allowed [`LONG_REQUEST_TIMEOUT`].
    pub long_routes: Arc<Vec<&'static str>>,
}

/// The timeout of a long route (a streamed bulk upload).
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The request's deadline: the context's timeout, or the long one on a long
/// route; a request past it gets 408.
async fn deadline(State(ctx): State<HttpContext>, req: Request, next: Next) -> Response {
    let long = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| ctx.long_routes.contains(&p.as_str()));
    let limit = if long {
        LONG_REQUEST_TIMEOUT
    } else {
        ctx.request_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// Wraps a service's `/v1` router with the shared routes and middleware.
pub fn finish_router(api: Router, ctx: HttpContext) -> Router {
    let shared = Router::new()
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({"status": "live"})) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs_page))
        .route("/docs/{file}", get(docs_asset))
        .with_state(ctx.clone());
    api.merge(shared)
        // A bug that panics in a handler becomes a 500 envelope, not a dropped connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), deadline))
        .layer(axum::middleware::from_fn_with_state(ctx, around_request))
}

async fn ready(State(ctx): State<HttpContext>) -> Response {
    let failing = ctx.readiness.failing().await;
    if failing.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "failing": failing})),
        )
            .into_response()
    }
}

async fn metrics(State(ctx): State<HttpContext>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
        .into_response()
}

async fn openapi(State(ctx): State<HttpContext>) -> Response {
    Json(ctx.openapi.as_ref().clone()).into_response()
}

/// The API reference page: Swagger UI over `/openapi.json`, from assets on
/// local disk (no network at run time). Without the assets it lists the
/// operations itself, so `/docs` always says something useful.
const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dialstack API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
if (window.SwaggerUIBundle) {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true});
} else {
  fetch("/openapi.json").then(r => r.json()).then(doc => {
    const root = document.getElementById("ui");
    const h = document.createElement("h1");
    h.textContent = doc.info.title + " " + doc.info.version;
    root.appendChild(h);
    const note = document.createElement("p");
    note.textContent = "Swagger UI assets are not installed (DIALSTACK_SWAGGER_UI_DIR); the operations:";
    root.appendChild(note);
    const list = document.createElement("ul");
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        const li = document.createElement("li");
        li.textContent = method.toUpperCase() + " " + path + " - " + (op.summary || op.description || "");
        list.appendChild(li);
      }
    }
    root.appendChild(list);
  });
}
</script></body></html>"##;

async fn docs_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DOCS_PAGE,
    )
        .into_response()
}

/// The two Swagger UI files `/docs` loads, read once from
/// `DIALSTACK_SWAGGER_UI_DIR` (default `/usr/share/dialstack/swagger-ui`,
/// where the images put them; `scripts/test-env.sh` unpacks them into its
/// tools folder). Only these names are served: no path reaches the disk.
fn swagger_asset(name: &str) -> Option<&'static [u8]> {
    use std::sync::OnceLock;
    static ASSETS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    let assets = ASSETS.get_or_init(|| {
        let dir = std::env::var("DIALSTACK_SWAGGER_UI_DIR")
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/usr/share/dialstack/swagger-ui".to_owned());
        ["swagger-ui.css", "swagger-ui-bundle.js"]
            .into_iter()
            .filter_map(|n| {
                let bytes = std::fs::read(std::path::Path::new(&dir).join(n)).ok()?;
                Some((n, bytes))
            })
            .collect()
    });
    assets
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| b.as_slice())
}

async fn docs_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let kind = match file.as_str() {
        "swagger-ui.css" => "text/css",
        "swagger-ui-bundle.js" => "text/javascript",
        _ => return ApiError::not_found("no such file").into_response(),
    };
    match swagger_asset(&file) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError::not_found(format!(
            "{file} is not installed (set DIALSTACK_SWAGGER_UI_DIR)"
        ))
        .into_response(),
    }
}

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Request id, span, metrics and the error envelope for every request.
async fn around_request(State(ctx): State<HttpContext>, req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span =
        tracing::info_span!("http_request", %method, route = %route, request_id = %request_id);
    let started = Instant::now();
    let rid = request_id.clone();
    let mut response = REQUEST_ID
        .scope(rid.clone(), async move {
            let response = next.run(req).await;
            normalise_error(response).await
        })
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    ctx.metrics
        .observe_http(&route, status, started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, "request served with server error");
        } else {
            tracing::debug!(status, "request served");
        }
    });
    response
}

/// Rewrites an error response without a JSON body into the envelope.
async fn normalise_error(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let code = ErrorCode::from_status(status);
    let message = if status.is_client_error() {
        let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_lowercase()
        } else {
            text
        }
    } else {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    };
    let mut out = envelope(status, code.as_str(), message);
    for (name, value) in parts.headers.iter() {
        if name == header::RETRY_AFTER || name == header::WWW_AUTHENTICATE || name == header::ALLOW
        {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Adds the `bearer` JWT security scheme to an OpenAPI document.
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Serialises an OpenAPI document as 3.1 JSON, with its parameters put
/// right ([`complete_parameters`]).
pub fn openapi_json(doc: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).unwrap_or_default();
    complete_parameters(&mut v);
    v
}

/// Puts an operation's parameters where its path says they are: a
/// parameter declared `in: path` that the path template does not name is a
/// query parameter (a query struct's fields default to `path` in the
/// generator), and a `{name}` of the template that no parameter declares is
/// added as a required string path parameter. OpenAPI requires both; a
/// generated client or Swagger UI gets them wrong otherwise.
pub fn complete_parameters(doc: &mut serde_json::Value) {
    use serde_json::{json, Value};
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (template, item) in paths.iter_mut() {
        let names: Vec<String> = template
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(n, _)| n.to_owned()))
            .collect();
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let params = op
                .entry("parameters")
                .or_insert_with(|| Value::Array(Vec::new()));
            let Some(params) = params.as_array_mut() else {
                continue;
            };
            for p in params.iter_mut() {
                let in_path = p["in"] == "path";
                let named = p["name"]
                    .as_str()
                    .is_some_and(|n| names.iter().any(|x| x == n));
                if in_path && !named {
                    p["in"] = json!("query");
                }
                if p["in"] == "path" {
                    p["required"] = json!(true);
                }
            }
            for n in &names {
                let declared = params
                    .iter()
                    .any(|p| p["in"] == "path" && p["name"].as_str() == Some(n));
                if !declared {
                    params.push(json!({
                        "name": n,
                        "in": "path",
                        "required": true,
                        "schema": {"type": "string"},
                    }));
                }
            }
            if params.is_empty() {
                op.remove("parameters");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn parameters_follow_the_path_template() {
        let mut doc = serde_json::json!({"paths": {
            "/v1/things/{id}": {"get": {"parameters": [
                {"name": "limit", "in": "path", "required": false, "schema": {"type": "integer"}},
            ]}},
            "/v1/things": {"post": {}},
        }});
        complete_parameters(&mut doc);
        let ps = &doc["paths"]["/v1/things/{id}"]["get"]["parameters"];
        assert_eq!(ps[0]["in"], "query", "{ps}");
        assert_eq!(
            ps[1],
            serde_json::json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}})
        );
        assert!(doc["paths"]["/v1/things"]["post"]
            .get("parameters")
            .is_none());
    }
    use axum::routing::post;
    use tower::ServiceExt;

    fn app() -> Router {
        #[derive(serde::Deserialize)]
        struct In {
            #[allow(dead_code)]
            name: String,
        }
        let api = Router::new()
            .route("/v1/echo", post(|ApiJson(_): ApiJson<In>| async { "ok" }))
            .route(
                "/v1/boom",
                get(|| async {
                    Err::<(), _>(ApiError::internal(anyhow::anyhow!("secret detail")))
                }),
            );
        finish_router(
            api,
            HttpContext {
                metrics: Metrics::new("test"),
                readiness: Readiness::default(),
                openapi: Arc::new(serde_json::json!({"openapi": "3.1.0"})),
                request_timeout: Duration::from_secs(5),
                long_routes: Arc::new(vec![]),
            },
        )
    }

    async fn body_json(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn malformed_json_gets_the_envelope_with_the_request_id() {
        let resp = app()
            .oneshot(
                Request::post("/v1/echo")
                    .header("content-type", "application/json")
                    .header("x-request-id", "abc-123")
                    .body(Body::from("{not json"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["x-request-id"], "abc-123");
        let body = body_json(resp).await;
        assert_eq!(body["code"], "invalid_json");
        assert_eq!(body["request_id"], "abc-123");
    }

    #[tokio::test]
    async fn unknown_route_and_internal_errors_use_the_envelope_without_internals() {
        let resp = app()
            .oneshot(Request::get("/v1/nowhere").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = body_json(resp).await;
        assert_eq!(body["code"], "not_found");
        assert!(!body["request_id"].as_str().unwrap().is_empty());

        let resp = app()
            .oneshot(Request::get("/v1/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(resp).await;
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("secret detail"));
    }

    #[tokio::test]
    async fn metrics_count_requests_by_route_and_status() {
        let app = app();
        let _ = app
            .clone()
            .oneshot(Request::get("/health/live").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let resp = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains(
            r#"dialstack_http_requests_total{route="/health/live",service="test",status="200"} 1"#
        ));
    }
}
