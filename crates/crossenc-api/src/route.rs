//! Which model a request is for: found by the name it sends, and entered among that
//! model's requests in flight.

use std::sync::Arc;

use crossenc_core::admission::{Refused, RequestPermit};
use crossenc_core::{ModelRoute, Models, PipelineError};
use crossenc_metrics::ModelMetrics;

use crate::failure::{ErrorClass, Failure};

/// A request's model, and its place among that model's requests in flight.
pub(crate) struct Routed<'a> {
    pub model: &'a ModelRoute,
    _permit: RequestPermit,
}

/// Finds the model `name` asks for (`""`: the first), tells `recorder` (so that even a
/// refusal from here on counts as the model's), and enters it: refused while the model
/// is at its `max_concurrent_requests`, whatever the others hold.
pub(crate) fn route<'a>(
    models: &'a Models,
    name: &str,
    recorder: impl FnOnce(&Arc<ModelMetrics>),
) -> Result<Routed<'a>, Failure> {
    let model = models.route(Some(name))?;
    recorder(&model.pipeline.metrics);
    let permit = model
        .pipeline
        .admission
        .enter()
        .map_err(|refused| match refused {
            Refused::Requests { limit } => Failure::new(
                ErrorClass::ResourceExhausted,
                format!(
                    "model {} is at its max_concurrent_requests ({limit}); retry later",
                    model.name
                ),
            ),
            refused => PipelineError::Refused(refused).into(),
        })?;
    Ok(Routed {
        model,
        _permit: permit,
    })
}
