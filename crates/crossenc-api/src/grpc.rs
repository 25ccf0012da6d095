//! The `crossenc.v1.CrossEncoder` gRPC service: validation, the pipeline, activation
//! and ranking.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_server::CrossEncoder;
use crossenc_proto::v1::{
    InferRequest, InferResponse, LongDocuments, RerankRequest, RerankResponse, RerankResult,
    TruncationDirection,
};
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crossenc_core::models::GatePass;
use crossenc_core::pipeline::ReadOptions;
use crossenc_core::{InvalidRequest, Models, PipelineError, RequestId};
use crossenc_metrics::{MethodLabels, Metrics, RequestRecorder};

use crate::access::{self, Served};
use crate::auth::LiveKeys;
use crate::failure::{grpc_code_word, Failure};
use crate::route::route;
use crate::rule::RequestRule;
use crate::validate::{check_count, check_query, check_top_n, rank};

/// Serves Infer and Rerank through the pipeline of the model each request names.
pub struct CrossEncoderService {
    models: Arc<Models>,
    metrics: Arc<Metrics>,
    /// The deadline of a request that brings none.
    default_deadline: Duration,
}

impl CrossEncoderService {
    pub fn new(models: Arc<Models>, metrics: Arc<Metrics>, default_deadline: Duration) -> Self {
        Self {
            models,
            metrics,
            default_deadline,
        }
    }
}

/// A handler's response with what its request cost, or its failure.
type Handled<T> = Result<(Response<T>, Served), Failure>;

#[tonic::async_trait]
impl CrossEncoder for CrossEncoderService {
    async fn infer(
        &self,
        request: Request<InferRequest>,
    ) -> Result<Response<InferResponse>, Status> {
        let (recorder, id) = self.start("grpc_infer", &request);
        let handled = self.answer_infer(request, &id, &recorder).await;
        finish((recorder, "grpc_infer", &id), handled)
    }

    async fn rerank(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        let (recorder, id) = self.start("grpc_rerank", &request);
        let handled = self.answer_rerank(request, &id, &recorder).await;
        finish((recorder, "grpc_rerank", &id), handled)
    }
}

impl CrossEncoderService {
    /// Starts timing a request from its arrival, before its body was read; its id.
    fn start<T>(&self, method: &'static str, request: &Request<T>) -> (RequestRecorder, RequestId) {
        let arrived = request
            .extensions()
            .get::<ArrivedAt>()
            .map_or_else(Instant::now, |a| a.0);
        let id = request.extensions().get::<RequestId>().cloned();
        let recorder = RequestRecorder::start(Arc::clone(&self.metrics), method, arrived);
        (recorder, id.unwrap_or_else(RequestId::generate))
    }

    async fn answer_infer(
        &self,
        request: Request<InferRequest>,
        id: &RequestId,
        recorder: &RequestRecorder,
    ) -> Handled<InferResponse> {
        let deadline = deadline_of(&request, self.default_deadline);
        let pass = request.extensions().get::<GatePass>().cloned();
        let request = request.into_inner();
        let routed = route(&self.models, &request.model, |m| recorder.route(m))?;
        pass.inspect(GatePass::release);
        let (model, pipeline) = (routed.model, &routed.model.pipeline);
        validate_infer(&request, model.max_client_batch_size)?;
        let pairs = request.pairs.iter();
        let reading = pipeline.reading(&read_options(ReadMessage::of_infer(&request))?)?;
        let texts = pipeline.pair_texts(
            pairs.map(|p| (p.query.as_str(), p.document.as_str())),
            reading,
        );
        let instruction = request.instruction.as_deref();
        let texts = pipeline.instructed(texts, instruction, "instruction")?;
        let raw_scores = request.raw_scores;
        // The texts hold what the model needs: the message itself can go.
        drop(request);
        let scored = within(deadline, pipeline.score(texts, deadline.at, id))
            .await?
            .map_err(|e| Failure::of_request(e, id))?;
        let served = Served::of(&scored);
        let response = Response::new(InferResponse {
            scores: pipeline.activate(scored.scores, raw_scores),
            tokens: scored.tokens,
            model: model.name.to_string(),
        });
        Ok((response, served))
    }

    async fn answer_rerank(
        &self,
        request: Request<RerankRequest>,
        id: &RequestId,
        recorder: &RequestRecorder,
    ) -> Handled<RerankResponse> {
        let deadline = deadline_of(&request, self.default_deadline);
        let pass = request.extensions().get::<GatePass>().cloned();
        let mut request = request.into_inner();
        let routed = route(&self.models, &request.model, |m| recorder.route(m))?;
        pass.inspect(GatePass::release);
        let (model, pipeline) = (routed.model, &routed.model.pipeline);
        validate_rerank(&request, model.max_client_batch_size)?;
        let reading = pipeline.reading(&read_options(ReadMessage::of_rerank(&request))?)?;
        let texts = pipeline.rerank_texts(&request.query, &request.documents, "documents", reading);
        let instruction = request.instruction.as_deref();
        let texts = pipeline.instructed(texts, instruction, "instruction")?;
        request.query = String::new();
        if !request.return_documents {
            request.documents = Vec::new();
        }
        let scored = within(deadline, pipeline.score(texts, deadline.at, id))
            .await?
            .map_err(|e| Failure::of_request(e, id))?;
        let served = Served::of(&scored);
        let scores = pipeline.activate(scored.scores, request.raw_scores);
        let mut documents = request.documents;
        let results = rank(&scores, request.top_n)
            .into_iter()
            .map(|(index, score)| RerankResult {
                index: index as u32,
                score,
                document: request
                    .return_documents
                    .then(|| std::mem::take(&mut documents[index])),
            })
            .collect();
        let response = Response::new(RerankResponse {
            results,
            tokens: scored.tokens,
            model: model.name.to_string(),
        });
        Ok((response, served))
    }
}

/// A message's reading fields, as protobuf spells them.
struct ReadMessage {
    long_documents: i32,
    max_chunks_per_doc: Option<u32>,
    truncate: Option<bool>,
    truncation_direction: i32,
}

impl ReadMessage {
    fn of_infer(r: &InferRequest) -> Self {
        Self {
            long_documents: r.long_documents,
            max_chunks_per_doc: r.max_chunks_per_doc,
            truncate: r.truncate,
            truncation_direction: r.truncation_direction,
        }
    }

    fn of_rerank(r: &RerankRequest) -> Self {
        Self {
            long_documents: r.long_documents,
            max_chunks_per_doc: r.max_chunks_per_doc,
            truncate: r.truncate,
            truncation_direction: r.truncation_direction,
        }
    }
}

/// The options a message asks for; an enum value this server does not know is refused.
fn read_options(message: ReadMessage) -> Result<ReadOptions, InvalidRequest> {
    use crossenc_types::{LongDocuments as Mode, TruncationDirection as Direction};
    let long_documents = match LongDocuments::try_from(message.long_documents) {
        Ok(LongDocuments::Unspecified) => None,
        Ok(LongDocuments::Truncate) => Some(Mode::Truncate),
        Ok(LongDocuments::Chunk) => Some(Mode::Chunk),
        Err(_) => return Err(unknown_enum("long_documents", message.long_documents)),
    };
    let truncation_direction = match TruncationDirection::try_from(message.truncation_direction) {
        Ok(TruncationDirection::Unspecified) => None,
        Ok(TruncationDirection::Right) => Some(Direction::Right),
        Ok(TruncationDirection::Left) => Some(Direction::Left),
        Err(_) => {
            return Err(unknown_enum(
                "truncation_direction",
                message.truncation_direction,
            ))
        }
    };
    Ok(ReadOptions {
        long_documents,
        max_chunks_per_doc: message.max_chunks_per_doc,
        truncate: message.truncate,
        truncation_direction,
    })
}

fn unknown_enum(field: &str, value: i32) -> InvalidRequest {
    InvalidRequest::Field(format!("{field} {value} is not a value this server knows"))
}

/// Records how the request ended, writes its access line, and hands its response (or
/// status) to tonic.
fn finish<T>(
    (recorder, method, id): (RequestRecorder, &str, &RequestId),
    handled: Handled<T>,
) -> Result<Response<T>, Status> {
    match handled {
        Ok((response, served)) => {
            let latency = recorder.finish(Ok(Some(served.stages)));
            access::log(Some(id), method, &"OK", Some(&served), latency);
            Ok(response)
        }
        Err(failure) => {
            let word = grpc_code_word(failure.class.grpc_code());
            let latency = recorder.finish(Err(word));
            access::log(Some(id), method, &word, None, latency);
            Err(failure.into_status())
        }
    }
}

/// When a request arrived, stamped before its body is read: the client's deadline
/// counts from there, as does tonic's own timer.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedAt(pub Instant);

/// Stamps [`ArrivedAt`] on every request; a layer under the gRPC server.
pub fn stamp_arrival<B>(mut request: http::Request<B>) -> http::Request<B> {
    request.extensions_mut().insert(ArrivedAt(Instant::now()));
    request
}

/// How much earlier than the client's deadline the handler gives up. tonic's own
/// `grpc-timeout` timer answers CANCELLED; ending first lets the client see
/// DEADLINE_EXCEEDED, as gRPC specifies.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// When a request must be answered by.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
    /// The client's own (grpc-timeout), or the server's default.
    from_client: bool,
}

/// The instant this request's client stops waiting, or the server's default deadline
/// for a request that set none.
fn deadline_of<T>(request: &Request<T>, default: Duration) -> Deadline {
    let arrived = request
        .extensions()
        .get::<ArrivedAt>()
        .map_or_else(Instant::now, |a| a.0);
    match client_deadline(request.metadata()) {
        Some(timeout) => Deadline {
            at: arrived + timeout.saturating_sub(DEADLINE_MARGIN),
            timeout,
            from_client: true,
        },
        None => Deadline {
            at: arrived + default,
            timeout: default,
            from_client: false,
        },
    }
}

/// Runs `work` until the deadline. Dropping `work` withdraws its pairs that no worker
/// has taken.
async fn within<T>(deadline: Deadline, work: impl Future<Output = T>) -> Result<T, Failure> {
    let Deadline {
        at,
        timeout,
        from_client,
    } = deadline;
    tokio::time::timeout_at(at.into(), work).await.map_err(|_| {
        let whose = match from_client {
            true => "the client's deadline",
            false => "the server's default_deadline",
        };
        Failure::deadline(whose, timeout)
    })
}

/// A gRPC call's answer: what a rule that refuses it gives back.
type CallAnswer = http::Response<tonic::body::Body>;

/// Refuses a CrossEncoder call at once while `max_concurrent_requests` calls are in
/// flight; health and reflection pass freely.
#[derive(Clone)]
pub struct Gate {
    pub models: Arc<Models>,
    pub metrics: Arc<Metrics>,
}

impl<B> RequestRule<B, CallAnswer> for Gate {
    type Held = Option<GatePass>;

    fn apply(
        &self,
        mut request: http::Request<B>,
    ) -> Result<(http::Request<B>, Self::Held), CallAnswer> {
        let method = match request.uri().path() {
            "/crossenc.v1.CrossEncoder/Rerank" => "grpc_rerank",
            "/crossenc.v1.CrossEncoder/Infer" => "grpc_infer",
            _ => return Ok((request, None)),
        };
        let pass = self.models.enter().map_err(|refused| {
            let failure = Failure::from(PipelineError::Refused(refused));
            let metrics = Arc::clone(&self.metrics);
            RequestRecorder::start(metrics, method, Instant::now())
                .finish(Err(grpc_code_word(failure.class.grpc_code())));
            failure.into_status().into_http()
        })?;
        // For the handler to give back once the request has its model's place.
        request.extensions_mut().insert(pass.clone());
        Ok((request, Some(pass)))
    }
}

/// The `method` labels of gRPC calls refused for their key.
pub const KEYED_METHODS: [&str; 4] = ["grpc_rerank", "grpc_infer", "grpc_reflection", "grpc_other"];

/// Refuses every call but the health service's without a valid API key (UNAUTHENTICATED,
/// nothing else said); counted by method.
#[derive(Clone)]
pub struct KeyCheck {
    pub keys: Arc<LiveKeys>,
    pub metrics: Arc<Metrics>,
}

impl<B> RequestRule<B, CallAnswer> for KeyCheck {
    type Held = ();

    fn apply(&self, request: http::Request<B>) -> Result<(http::Request<B>, ()), CallAnswer> {
        match self.check(request.uri().path(), request.headers()) {
            Ok(()) => Ok((request, ())),
            Err(status) => Err(status.into_http()),
        }
    }
}

impl KeyCheck {
    fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let presented = headers.get(http::header::AUTHORIZATION);
        if path.starts_with("/grpc.health.v1.Health/")
            || self.keys.admit(presented.map(|v| v.as_bytes()))
        {
            return Ok(());
        }
        let method = match path {
            "/crossenc.v1.CrossEncoder/Rerank" => KEYED_METHODS[0],
            "/crossenc.v1.CrossEncoder/Infer" => KEYED_METHODS[1],
            p if p.starts_with("/grpc.reflection.") => KEYED_METHODS[2],
            _ => KEYED_METHODS[3],
        };
        let labels = MethodLabels { method };
        self.metrics.auth_failures.get_or_create(&labels).inc();
        let failure = Failure::unauthenticated();
        // The API's calls are requests like any: counted with their code.
        if matches!(method, "grpc_rerank" | "grpc_infer") {
            let code = grpc_code_word(failure.class.grpc_code());
            RequestRecorder::start(Arc::clone(&self.metrics), method, Instant::now())
                .finish(Err(code));
        }
        Err(failure.into_status())
    }
}

/// The client's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn client_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn validate_infer(request: &InferRequest, limit: usize) -> Result<(), Failure> {
    check_count("pairs", request.pairs.len(), limit, "pair")?;
    for (i, pair) in request.pairs.iter().enumerate() {
        check_query(&format!("pairs[{i}].query"), &pair.query)?;
    }
    Ok(())
}

fn validate_rerank(request: &RerankRequest, limit: usize) -> Result<(), Failure> {
    check_query("query", &request.query)?;
    check_count("documents", request.documents.len(), limit, "document")?;
    check_top_n(request.top_n)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crossenc_proto::v1::Pair;
    use tonic::Code;

    use super::*;

    #[test]
    fn grpc_timeout_headers_parse_as_the_spec_says() {
        let deadline = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            client_deadline(&metadata)
        };
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("3S"), Some(Duration::from_secs(3)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            deadline("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(deadline("123456789m"), None, "at most 8 digits");
        assert_eq!(deadline("m"), None);
        assert_eq!(deadline("5x"), None);
        assert_eq!(client_deadline(&MetadataMap::new()), None);
    }

    fn rerank_request(query: &str, documents: usize) -> RerankRequest {
        RerankRequest {
            query: query.into(),
            documents: vec!["d".into(); documents],
            ..Default::default()
        }
    }

    #[test]
    fn bad_rerank_requests_say_what_is_wrong() {
        let cases = [
            (rerank_request(" ", 1), "query is empty"),
            (rerank_request("q", 0), "documents is empty"),
            (
                rerank_request("q", 11),
                "documents has 11 entries; the limit (max_client_batch_size) is 10",
            ),
            (
                RerankRequest {
                    top_n: Some(0),
                    ..rerank_request("q", 1)
                },
                "top_n is 0",
            ),
        ];
        for (request, message) in cases {
            let status = validate_rerank(&request, 10).unwrap_err().into_status();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with(message),
                "{}",
                status.message()
            );
        }
        assert!(validate_rerank(&rerank_request("q", 10), 10).is_ok());
    }

    #[test]
    fn bad_infer_requests_say_what_is_wrong() {
        let pair = |q: &str| Pair {
            query: q.into(),
            document: String::new(),
        };
        let empty = InferRequest::default();
        assert!(validate_infer(&empty, 4)
            .unwrap_err()
            .message
            .starts_with("pairs is empty"));
        let blank_query = InferRequest {
            pairs: vec![pair("q"), pair("")],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        };
        assert_eq!(
            validate_infer(&blank_query, 4).unwrap_err().message,
            "pairs[1].query is empty"
        );
        let ok = InferRequest {
            pairs: vec![pair("q")],
            raw_scores: false,
            instruction: None,
            ..Default::default()
        };
        assert!(validate_infer(&ok, 4).is_ok());
    }
}
