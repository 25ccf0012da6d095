//! The real binary, real worker processes, real IPC and the real model, over gRPC.

mod limits;
mod processes;
mod requests;
mod scores;
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::{InferRequest, InferResponse, Pair, RerankRequest};
use support::{
    children_of, default_goldens_path, goldens, http_get, is_running, metric, model_dir, pairs,
    Golden, TestServer, BINARY,
};
use tonic::transport::Channel;
use tonic::Code;

/// The largest difference from the transformers reference that counts as the same score.
const TOLERANCE: f64 = 1e-4;

/// Infer on `rows`, raw logits back.
async fn infer_raw(mut client: CrossEncoderClient<Channel>, rows: &[Golden]) -> InferResponse {
    client
        .infer(InferRequest {
            pairs: pairs(rows),
            raw_scores: true,
            instruction: None,
            ..Default::default()
        })
        .await
        .expect("Infer failed")
        .into_inner()
}
