//! The HTTP JSON API, in the shapes retrieval frameworks already call: text-embeddings-
//! inference's `POST /rerank`, Cohere's and Jina's `POST /v1/rerank`, and `POST /score`
//! for raw pairs (gRPC `Infer`). All go through the same pipeline as gRPC.
//!
//! Errors are JSON `{"error", "error_type"}` with the status that fits; a body that is
//! not JSON, a field of the wrong type or an unknown field is a 400 naming the field.

use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crossenc_core::texts::RequestTexts;
use crossenc_core::{Pipeline, RequestId, Scores};

use crate::access::Served;
use crate::failure::{ErrorClass, Failure};
use crate::http::HttpState;
use crate::route::route;
use crate::validate::{check_count, check_query, check_top_n, json_read_options, rank};
use crossenc_core::models::GatePass;
use crossenc_metrics::RouteCell;

/// A JSON request's reading options.
macro_rules! read_options {
    ($request:expr) => {
        json_read_options(
            $request.long_documents.as_deref(),
            $request.max_chunks_per_doc,
            $request.truncate,
            $request.truncation_direction.as_deref(),
        )
    };
}
/// The OpenAPI document of this API, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "crossenc HTTP API",
        description = "Cross-encoder scoring and reranking"
    ),
    paths(rerank, v1_rerank, score, models),
    components(schemas(
        RerankRequest,
        RankedText,
        V1RerankRequest,
        V1Document,
        DocumentText,
        V1RerankResponse,
        V1Result,
        Usage,
        ScoreRequest,
        ScorePair,
        ScoreResponse,
        ModelList,
        ModelCard,
        ApiErrorBody
    ))
)]
pub struct ApiDoc;

/// text-embeddings-inference's rerank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// The model to score with, by its served name (`GET /v1/models`); the server's
    /// first model when absent. A name not served is refused (404).
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub texts: Vec<String>,
    /// The raw scores (a one-label head's logit; a two-label head's second logit less
    /// its first) instead of the activated ones.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
    /// `truncate` (cut to fit) or `chunk` (score in windows, keep the best window's
    /// score) for a document too long to fit beside the query; the model's
    /// `long_documents` when absent.
    #[serde(default)]
    pub long_documents: Option<String>,
    /// Under `chunk`, the most windows one document may make (at most, and by default,
    /// the model's `max_chunks_per_doc`); a document that needs more is refused (413).
    #[serde(default)]
    pub max_chunks_per_doc: Option<u32>,
    /// `false`: refuse (413) a pair that would be cut, rather than truncate it.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end of a document truncation cuts: `right` (its end, the default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// A decoder reranker's instruction (its prompt template's {instruction}); the
    /// template's default when absent. Refused for a model that reads none.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// One text of a TEI rerank answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankedText {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The Cohere / Jina rerank request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V1RerankRequest {
    /// The model to score with, by its served name (`GET /v1/models`); the server's
    /// first model when absent. A name not served is refused (404).
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<V1Document>,
    #[serde(default)]
    pub top_n: Option<u32>,
    /// Echo each document in its result (default false, as Cohere).
    #[serde(default)]
    pub return_documents: bool,
    /// `truncate` (cut to fit) or `chunk` (score in windows, keep the best window's
    /// score) for a document too long to fit beside the query; the model's
    /// `long_documents` when absent.
    #[serde(default)]
    pub long_documents: Option<String>,
    /// Under `chunk`, the most windows one document may make (at most, and by default,
    /// the model's `max_chunks_per_doc`); a document that needs more is refused (413).
    #[serde(default)]
    pub max_chunks_per_doc: Option<u32>,
    /// `false`: refuse (413) a pair that would be cut, rather than truncate it.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end of a document truncation cuts: `right` (its end, the default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// A decoder reranker's instruction (its prompt template's {instruction}); the
    /// template's default when absent. Refused for a model that reads none.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// A document: a string, or an object with its text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum V1Document {
    Text(String),
    Object(DocumentText),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentText {
    pub text: String,
}

impl V1Document {
    fn into_text(self) -> String {
        match self {
            V1Document::Text(text) | V1Document::Object(DocumentText { text }) => text,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct V1RerankResponse {
    /// The served model's name.
    pub model: String,
    pub results: Vec<V1Result>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct V1Result {
    pub index: usize,
    /// The raw score through the configured activation: by default the model's own,
    /// usually the sigmoid, in [0, 1].
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Real tokens the model read, after truncation.
    pub total_tokens: u64,
}

/// Raw (query, document) pairs, as gRPC `Infer`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// `truncate` (cut to fit) or `chunk` (score in windows, keep the best window's
    /// score) for a document too long to fit beside the query; the model's
    /// `long_documents` when absent.
    #[serde(default)]
    pub long_documents: Option<String>,
    /// Under `chunk`, the most windows one document may make (at most, and by default,
    /// the model's `max_chunks_per_doc`); a document that needs more is refused (413).
    #[serde(default)]
    pub max_chunks_per_doc: Option<u32>,
    /// `false`: refuse (413) a pair that would be cut, rather than truncate it.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end of a document truncation cuts: `right` (its end, the default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// The model to score with, by its served name (`GET /v1/models`); the server's
    /// first model when absent. A name not served is refused (404).
    #[serde(default)]
    pub model: Option<String>,
    pub pairs: Vec<ScorePair>,
    #[serde(default)]
    pub raw_scores: bool,
    /// A decoder reranker's instruction (its prompt template's {instruction}); the
    /// template's default when absent. Refused for a model that reads none.
    #[serde(default)]
    pub instruction: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScorePair {
    pub query: String,
    pub document: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    /// One score per pair, in request order.
    pub scores: Vec<f32>,
    pub tokens: u64,
    /// The model that scored them.
    pub model: String,
}

/// The models served, in the list shape OpenAI's, vLLM's and Infinity's `/v1/models`
/// answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    /// The name requests route by (`model`).
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the server started, in seconds since the epoch.
    pub created: u64,
    /// Always `crossenc`.
    pub owned_by: &'static str,
    /// The longest pair in tokens, once the model's workers have said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiErrorBody {
    pub error: String,
    /// `validation`, `payload_too_large`, `overloaded`, `unavailable`, `timeout` or
    /// `backend`.
    pub error_type: &'static str,
}

/// The error answers every route may give, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only described, never built: handlers answer with a Failure
enum ApiErrors {
    #[response(status = 400, description = "Bad input: the message names the field")]
    Validation(#[to_schema] ApiErrorBody),
    #[response(
        status = 413,
        description = "Too many documents, a body over the limit, or a text whose cut to max_text_bytes would change its tokens"
    )]
    TooLarge(#[to_schema] ApiErrorBody),
    #[response(
        status = 429,
        description = "Over max_concurrent_requests, max_queued_pairs or max_text_bytes_in_flight, or its deadline cannot be met (the message says the expected wait)"
    )]
    Overloaded(#[to_schema] ApiErrorBody),
    #[response(
        status = 404,
        description = "A model this server does not serve: the message lists those it does"
    )]
    NotFound(#[to_schema] ApiErrorBody),
    #[response(status = 503, description = "No worker up, or shutting down")]
    Unavailable(#[to_schema] ApiErrorBody),
    #[response(status = 504, description = "No answer within http_request_timeout")]
    Timeout(#[to_schema] ApiErrorBody),
}

/// Every failure answers with its class's status and a JSON body; the class rides in
/// the response's extensions for the request recorder.
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: self.message,
            error_type: self.class.error_type(),
        };
        let mut response = (self.class.http_status(), Json(body)).into_response();
        response.extensions_mut().insert(self.class);
        response
    }
}

/// `Json<T>` whose rejections are [`Failure`]s: 400 naming the field for bad JSON,
/// 413 for a body over the limit.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Failure {
    if let Some(refusal) = crate::budget::refusal_in(&rejection) {
        return Failure::new(ErrorClass::ResourceExhausted, refusal);
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Failure::new(
            ErrorClass::PayloadTooLarge,
            "the request body is over the server's limit (max_request_bytes)",
        );
    }
    let class = match rejection {
        JsonRejection::MissingJsonContentType(_) => ErrorClass::UnsupportedMediaType,
        _ => ErrorClass::InvalidArgument,
    };
    Failure::new(class, rejection.body_text())
}

/// The answer to a request not answered within `http_request_timeout`.
pub(crate) fn timed_out(timeout: std::time::Duration) -> Failure {
    Failure::new(
        ErrorClass::DeadlineExceeded,
        format!("no scores within http_request_timeout ({timeout:?})"),
    )
}

fn refuse_while_draining(state: &HttpState) -> Result<(), Failure> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(Failure::stopping());
    }
    Ok(())
}

async fn run(
    state: &HttpState,
    pipeline: &Pipeline,
    texts: RequestTexts,
    id: &RequestId,
) -> Result<Scores, Failure> {
    refuse_while_draining(state)?;
    let deadline = std::time::Instant::now() + state.request_timeout;
    let scoring = pipeline.score(texts, deadline, id);
    // Timing out drops the pipeline's future, which withdraws the pairs not yet started.
    tokio::time::timeout(state.request_timeout, scoring)
        .await
        .map_err(|_| timed_out(state.request_timeout))?
        .map_err(|e| Failure::of_request(e, id))
}

/// Rerank texts against a query (text-embeddings-inference's shape).
#[utoipa::path(post, path = "/rerank", request_body = RerankRequest,
    responses((status = 200, body = Vec<RankedText>, description = "Texts by score, highest first"), ApiErrors))]
pub async fn rerank(
    State(state): State<HttpState>,
    Extension(id): Extension<RequestId>,
    Extension(slot): Extension<RouteCell>,
    Extension(pass): Extension<GatePass>,
    ApiJson(request): ApiJson<RerankRequest>,
) -> Result<(Extension<Served>, Json<Vec<RankedText>>), Failure> {
    let name = request.model.as_deref().unwrap_or_default();
    let routed = route(&state.models, name, |m| slot.set(m))?;
    pass.release();
    let (model, pipeline) = (routed.model, &routed.model.pipeline);
    check_query("query", &request.query)?;
    check_count(
        "texts",
        request.texts.len(),
        model.max_client_batch_size,
        "text",
    )?;
    let reading = pipeline.reading(&read_options!(request)?)?;
    let texts = pipeline.rerank_texts(&request.query, &request.texts, "texts", reading);
    let instruction = request.instruction.as_deref();
    let texts = pipeline.instructed(texts, instruction, "instruction")?;
    let RerankRequest {
        texts: mut originals,
        raw_scores,
        return_text,
        ..
    } = request;
    if !return_text {
        originals = Vec::new();
    }
    let scored = run(&state, pipeline, texts, &id).await?;
    let served = Served::of(&scored);
    let scores = pipeline.activate(scored.scores, raw_scores);
    let mut texts = originals;
    let ranked = rank(&scores, None)
        .into_iter()
        .map(|(index, score)| RankedText {
            index,
            score,
            text: return_text.then(|| std::mem::take(&mut texts[index])),
        })
        .collect();
    Ok((Extension(served), Json(ranked)))
}

/// Rerank documents against a query (the Cohere / Jina shape).
#[utoipa::path(post, path = "/v1/rerank", request_body = V1RerankRequest,
    responses((status = 200, body = V1RerankResponse), ApiErrors))]
pub async fn v1_rerank(
    State(state): State<HttpState>,
    Extension(id): Extension<RequestId>,
    Extension(slot): Extension<RouteCell>,
    Extension(pass): Extension<GatePass>,
    ApiJson(request): ApiJson<V1RerankRequest>,
) -> Result<(Extension<Served>, Json<V1RerankResponse>), Failure> {
    let name = request.model.as_deref().unwrap_or_default();
    let routed = route(&state.models, name, |m| slot.set(m))?;
    pass.release();
    let (model, pipeline) = (routed.model, &routed.model.pipeline);
    check_query("query", &request.query)?;
    check_count(
        "documents",
        request.documents.len(),
        model.max_client_batch_size,
        "document",
    )?;
    check_top_n(request.top_n)?;
    let mut documents: Vec<String> = request
        .documents
        .into_iter()
        .map(V1Document::into_text)
        .collect();
    let reading = pipeline.reading(&read_options!(request)?)?;
    let texts = pipeline.rerank_texts(&request.query, &documents, "documents", reading);
    let instruction = request.instruction.as_deref();
    let texts = pipeline.instructed(texts, instruction, "instruction")?;
    drop(request.query);
    if !request.return_documents {
        documents = Vec::new();
    }
    let scored = run(&state, pipeline, texts, &id).await?;
    let served = Served::of(&scored);
    let scores = pipeline.activate(scored.scores, false);
    let results = rank(&scores, request.top_n)
        .into_iter()
        .map(|(index, relevance_score)| V1Result {
            index,
            relevance_score,
            document: request.return_documents.then(|| DocumentText {
                text: std::mem::take(&mut documents[index]),
            }),
        })
        .collect();
    let response = V1RerankResponse {
        model: model.name.to_string(),
        results,
        usage: Usage {
            total_tokens: scored.tokens,
        },
    };
    Ok((Extension(served), Json(response)))
}

/// Score (query, document) pairs, one score per pair in order (gRPC `Infer`).
#[utoipa::path(post, path = "/score", request_body = ScoreRequest,
    responses((status = 200, body = ScoreResponse), ApiErrors))]
pub async fn score(
    State(state): State<HttpState>,
    Extension(id): Extension<RequestId>,
    Extension(slot): Extension<RouteCell>,
    Extension(pass): Extension<GatePass>,
    ApiJson(request): ApiJson<ScoreRequest>,
) -> Result<(Extension<Served>, Json<ScoreResponse>), Failure> {
    let name = request.model.as_deref().unwrap_or_default();
    let routed = route(&state.models, name, |m| slot.set(m))?;
    pass.release();
    let (model, pipeline) = (routed.model, &routed.model.pipeline);
    check_count(
        "pairs",
        request.pairs.len(),
        model.max_client_batch_size,
        "pair",
    )?;
    for (i, pair) in request.pairs.iter().enumerate() {
        check_query(&format!("pairs[{i}].query"), &pair.query)?;
    }
    let pairs = request.pairs.iter();
    let reading = pipeline.reading(&read_options!(request)?)?;
    let texts = pipeline.pair_texts(
        pairs.map(|p| (p.query.as_str(), p.document.as_str())),
        reading,
    );
    let instruction = request.instruction.as_deref();
    let texts = pipeline.instructed(texts, instruction, "instruction")?;
    drop(request.pairs);
    let scored = run(&state, pipeline, texts, &id).await?;
    let served = Served::of(&scored);
    let response = ScoreResponse {
        scores: pipeline.activate(scored.scores, request.raw_scores),
        tokens: scored.tokens,
        model: model.name.to_string(),
    };
    Ok((Extension(served), Json(response)))
}

/// The models this server serves; requests name one by its `id`.
#[utoipa::path(get, path = "/v1/models",
    responses((status = 200, body = ModelList, description = "The served models, the default first")))]
pub async fn models(State(state): State<HttpState>) -> Json<ModelList> {
    let data = state
        .models
        .iter()
        .map(|model| ModelCard {
            id: model.name.to_string(),
            object: "model",
            created: state.started_at,
            owned_by: "crossenc",
            max_model_len: model.pipeline.learned_max_length(),
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// The OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_documents_its_error_answers() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in ["/rerank", "/v1/rerank", "/score"] {
            let responses = &doc["paths"][path]["post"]["responses"];
            for status in ["200", "400", "404", "413", "429", "503", "504"] {
                assert!(
                    responses.get(status).is_some(),
                    "{path} lacks {status}: {responses}"
                );
            }
        }
    }
}
