//! The byte budget of request bodies (`server.max_inflight_request_bytes`): every body,
//! gRPC or HTTP, takes room for each chunk as it arrives and gives it all back once its
//! request is answered, so the supervisor's memory for requests is bounded in bytes
//! whatever their count. Room is taken as bytes arrive, not as a `content-length`
//! promises them: a client that declares a large body and trickles it holds only what
//! it sent. A chunk that finds no room waits a moment (bodies finish and give theirs
//! back); then the request is refused, 429 / RESOURCE_EXHAUSTED, naming the setting.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use tonic::codegen::http;

use crate::rule::RequestRule;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long a chunk waits for room before its request is refused.
const PATIENCE: Duration = Duration::from_secs(1);

/// Room for request bodies, in bytes.
#[derive(Debug)]
pub struct BodyBudget {
    room: Arc<Semaphore>,
    total: u32,
}

/// Why a body was cut short: the budget had no room for it.
#[derive(Debug, thiserror::Error)]
#[error("the server is holding as many request bytes as it may (server.max_inflight_request_bytes = {total}); retry later")]
pub struct BudgetExhausted {
    total: u32,
}

impl BodyBudget {
    /// A budget of `total` bytes (at most 4 GiB: semaphores count in u32).
    pub fn new(total: usize) -> Arc<Self> {
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        Arc::new(Self {
            room: Arc::new(Semaphore::new(total as usize)),
            total,
        })
    }

    /// Bytes now held by bodies.
    pub fn held(&self) -> usize {
        self.total as usize - self.room.available_permits()
    }

    /// `body`, taking room from the budget as it is read; the room stays taken while
    /// the returned [`Hold`] (or the body) lives.
    pub fn wrap<B>(self: &Arc<Self>, body: B, refusal: Refusal) -> (BudgetedBody<B>, Hold) {
        let hold = Hold::default();
        let body = BudgetedBody {
            inner: body,
            budget: Arc::clone(self),
            hold: hold.clone(),
            waiting: None,
            refusal,
        };
        (body, hold)
    }

    fn exhausted(&self) -> BudgetExhausted {
        BudgetExhausted { total: self.total }
    }
}

/// The budget's refusal, if `error` or one of its sources is one: what to tell the client.
pub fn refusal_in(error: &(dyn Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BudgetExhausted>() {
            return Some(error.to_string());
        }
        if let Some(status) = error.downcast_ref::<tonic::Status>() {
            let refused = status.code() == tonic::Code::ResourceExhausted;
            return refused.then(|| status.message().to_string());
        }
        next = error.source();
    }
    None
}

/// How a body says it was refused: as the error type its reader looks for.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// A [`BudgetExhausted`], which the JSON extractor's rejection carries.
    Http,
    /// A `tonic::Status` (RESOURCE_EXHAUSTED), which tonic answers as it is.
    Grpc,
}

/// The room one request's body has taken; given back when the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub struct Hold(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Hold {
    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
    }
}

type Wait = Pin<
    Box<dyn Future<Output = Result<Result<OwnedSemaphorePermit, AcquireError>, Elapsed>> + Send>,
>;

/// A request body that takes room from a [`BodyBudget`] for each chunk it yields.
pub struct BudgetedBody<B> {
    inner: B,
    budget: Arc<BodyBudget>,
    hold: Hold,
    /// A chunk that arrived with no room for it, and the wait for room.
    waiting: Option<(Frame<Bytes>, Wait)>,
    refusal: Refusal,
}

impl<B> BudgetedBody<B> {
    fn refused(&self) -> BoxError {
        let exhausted = self.budget.exhausted();
        match self.refusal {
            Refusal::Http => Box::new(exhausted),
            Refusal::Grpc => Box::new(tonic::Status::resource_exhausted(exhausted.to_string())),
        }
    }
}

impl<B> Body for BudgetedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some((_, wait)) = this.waiting.as_mut() {
            let room = ready!(wait.as_mut().poll(cx));
            let Some((frame, _)) = this.waiting.take() else {
                return Poll::Ready(None);
            };
            return Poll::Ready(Some(match room {
                Ok(Ok(permit)) => {
                    this.hold.add(permit);
                    Ok(frame)
                }
                _ => Err(this.refused()),
            }));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            Some(Ok(frame)) => frame,
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        if len == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        let room = Arc::clone(&this.budget.room);
        // No single chunk can need more than the whole budget, or it would wait for ever.
        let wanted = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .min(this.budget.total);
        if let Ok(permit) = Arc::clone(&room).try_acquire_many_owned(wanted) {
            this.hold.add(permit);
            return Poll::Ready(Some(Ok(frame)));
        }
        let wait = Box::pin(tokio::time::timeout(
            PATIENCE,
            room.acquire_many_owned(wanted),
        ));
        this.waiting = Some((frame, wait));
        // Polled once now, so that the wait's waker is registered.
        Pin::new(this).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Puts every gRPC call's body on the budget; the room is given back once the call
/// is answered.
#[derive(Clone)]
pub struct GrpcBudget(pub Arc<BodyBudget>);

impl<Answer> RequestRule<tonic::body::Body, Answer> for GrpcBudget {
    type Held = Hold;

    fn apply(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<(http::Request<tonic::body::Body>, Hold), Answer> {
        let (parts, body) = request.into_parts();
        let (body, hold) = self.0.wrap(body, Refusal::Grpc);
        let request = http::Request::from_parts(parts, tonic::body::Body::new(body));
        Ok((request, hold))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn body(
        chunks: &[usize],
    ) -> http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Unpin,
    > {
        let frames: Vec<_> = chunks
            .iter()
            .map(|&n| Ok(Frame::data(Bytes::from(vec![b'x'; n]))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_holds_what_it_read_until_its_request_is_answered() {
        let budget = BodyBudget::new(100);
        let (read, hold) = budget.wrap(body(&[30, 20]), Refusal::Http);
        let bytes = read.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 50);
        assert_eq!(budget.held(), 50, "the body's bytes are held past its end");
        drop(hold);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_the_budget_waits_then_is_refused() {
        let budget = BodyBudget::new(100);
        let (first, first_hold) = budget.wrap(body(&[80]), Refusal::Http);
        first.collect().await.unwrap();
        let (second, _hold) = budget.wrap(body(&[10, 30]), Refusal::Http);
        let error = second.collect().await.unwrap_err();
        let refusal = refusal_in(error.as_ref()).expect("the budget's refusal");
        assert!(refusal.contains("max_inflight_request_bytes"), "{refusal}");
        // Room given back lets the next body through.
        drop(first_hold);
        let (third, _hold) = budget.wrap(body(&[90]), Refusal::Grpc);
        assert_eq!(third.collect().await.unwrap().to_bytes().len(), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_goes_on_when_room_is_given_back_in_time() {
        let budget = BodyBudget::new(100);
        let (first, first_hold) = budget.wrap(body(&[90]), Refusal::Http);
        first.collect().await.unwrap();
        let (second, _hold) = budget.wrap(body(&[50]), Refusal::Grpc);
        let reading =
            tokio::spawn(async move { second.collect().await.map(|c| c.to_bytes().len()) });
        tokio::time::sleep(PATIENCE / 2).await;
        drop(first_hold);
        assert_eq!(reading.await.unwrap().unwrap(), 50);
    }
}
