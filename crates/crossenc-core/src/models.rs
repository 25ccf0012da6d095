//! The models a server serves, and which one a request is for. Each model has its own
//! pipeline: its own workers, scheduler and admission, so that one model's overload or
//! crash never refuses or delays another's requests.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::admission::Refused;
use crate::pipeline::Pipeline;

/// One served model as requests reach it: its name and its pipeline.
pub struct ModelRoute {
    /// What requests name it by, and answers and the metrics call it.
    pub name: Arc<str>,
    pub pipeline: Arc<Pipeline>,
    /// Most documents (Rerank) or pairs (Infer) one of its requests may carry.
    pub max_client_batch_size: usize,
}

/// Every served model, in the configured order: the first serves requests that name none.
pub struct Models {
    models: Vec<ModelRoute>,
    /// Requests whose bodies are being read, before they name a model: each model's
    /// `max_concurrent_requests`, together.
    reading: Arc<Semaphore>,
    max_reading: usize,
}

/// A request for a model this server does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {asked:?} is not served here; the models served are: {}", served.join(", "))]
pub struct UnknownModel {
    pub asked: String,
    pub served: Vec<String>,
}

/// A request's place among those being read, before its model is known. It is given
/// back once the request has a place among its model's requests in flight
/// ([`GatePass::release`]), or when it is answered: so the gate counts only unrouted
/// requests, and one model's requests in flight never hold the room another's need.
#[derive(Debug, Clone)]
pub struct GatePass(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl GatePass {
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Models {
    /// `models` must not be empty: a server serves at least one.
    pub fn new(models: Vec<ModelRoute>, max_concurrent_requests: usize) -> Self {
        assert!(!models.is_empty(), "a server serves at least one model");
        let max_reading = max_concurrent_requests.saturating_mul(models.len());
        Self {
            models,
            reading: Arc::new(Semaphore::new(max_reading)),
            max_reading,
        }
    }

    /// The model a request names; an absent or empty name is the first model.
    pub fn route(&self, name: Option<&str>) -> Result<&ModelRoute, UnknownModel> {
        let Some(asked) = name.filter(|n| !n.is_empty()) else {
            return Ok(&self.models[0]);
        };
        self.models
            .iter()
            .find(|m| &*m.name == asked)
            .ok_or_else(|| UnknownModel {
                // What the client sent is echoed in the message only, shortened: it is
                // never a metric label or a log field of unbounded size.
                asked: asked.chars().take(128).collect(),
                served: self.models.iter().map(|m| m.name.to_string()).collect(),
            })
    }

    /// Lets a request in before its body is read, or says the server is full.
    pub fn enter(&self) -> Result<GatePass, Refused> {
        Arc::clone(&self.reading)
            .try_acquire_owned()
            .map(|permit| GatePass(Arc::new(Mutex::new(Some(permit)))))
            .map_err(|_| Refused::Requests {
                limit: self.max_reading,
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = &ModelRoute> {
        self.models.iter()
    }

    /// Every model has a live worker of each kind.
    pub fn is_ready(&self) -> bool {
        self.models.iter().all(|m| m.pipeline.is_ready())
    }

    /// What changes when any model's workers join or leave.
    pub fn changes(&self) -> Vec<watch::Receiver<u64>> {
        let sets = self.models.iter().map(|m| &m.pipeline);
        sets.flat_map(|p| [p.tokenizers.changes(), p.models.changes()])
            .collect()
    }
}
