//! The one shape of the faces' own tower layers: a rule sees a request before it goes
//! on, may change it (put its body on the byte budget) or refuse it with an answer of its
//! own (no key, the server full), and holds something (a permit, a count of requests in
//! flight) until the request is answered.

use std::future::Future;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::codegen::http;

/// A rule applied to every request under a server.
pub trait RequestRule<B, Answer>: Clone + Send + 'static {
    /// What the request holds until it is answered.
    type Held: Send + 'static;

    /// The request, perhaps changed, with what it holds; or the answer that refuses it.
    fn apply(&self, request: http::Request<B>) -> Result<(http::Request<B>, Self::Held), Answer>;
}

/// Applies a [`RequestRule`] under a server.
#[derive(Clone)]
pub struct RuleLayer<R>(pub R);

impl<S, R: Clone> tower::Layer<S> for RuleLayer<R> {
    type Service = Ruled<S, R>;

    fn layer(&self, inner: S) -> Ruled<S, R> {
        Ruled {
            inner,
            rule: self.0.clone(),
        }
    }
}

/// The service [`RuleLayer`] makes.
#[derive(Clone)]
pub struct Ruled<S, R> {
    inner: S,
    rule: R,
}

impl<S, B, R> tower::Service<http::Request<B>> for Ruled<S, R>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: RequestRule<B, S::Response>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.rule.apply(request) {
            Ok((request, held)) => held_until_answered(self.inner.call(request), held),
            Err(answer) => Box::pin(std::future::ready(Ok(answer))),
        }
    }
}

/// `answer`, keeping `held` (a permit, a count of requests in flight) until it is ready.
pub(crate) fn held_until_answered<F, H>(answer: F, held: H) -> BoxFuture<'static, F::Output>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
    Box::pin(async move {
        let answer = answer.await;
        drop(held);
        answer
    })
}
