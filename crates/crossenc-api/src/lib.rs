//! crossenc's faces: the `crossenc.v1.CrossEncoder` gRPC service, the HTTP JSON API in
//! the shapes retrieval frameworks call, the probes, `/metrics` and the OpenAPI
//! document, over listeners that bound connections and slow clients.
//!
//! A face checks a request's shape ([`validate`]), hands its texts to the core's
//! pipeline, and turns what comes back into a response; every failure is classed once
//! ([`failure`]) into its gRPC code, HTTP status, JSON `error_type` and metrics label.
//!
//! This crate must never know how workers run (processes, IPC, respawn) or how pairs
//! are batched: it sees only the core's `Pipeline` and its errors.

pub mod access;
pub mod auth;
pub mod budget;
pub mod failure;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod reload;
pub mod request_id;
pub mod rest;
mod route;
pub mod rule;
pub mod serve;
pub mod tls;
pub mod validate;

pub use serve::{ApiError, Faces, FacesState, Listeners};
