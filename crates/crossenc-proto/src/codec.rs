//! The protobuf codec of the crossenc.v1 service, timed: how long encoding a response
//! and decoding a request take, for the server's metrics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Told how long each message took to encode or decode.
pub trait CodecObserver: Send + Sync {
    fn encoded(&self, took: Duration);
    fn decoded(&self, took: Duration);
}

/// The process's one observer: the generated service code builds its codec with
/// `Default`, so the observer cannot be handed to it.
static OBSERVER: OnceLock<Box<dyn CodecObserver>> = OnceLock::new();

/// Sets the process's codec observer; `false` if one was set already (it stays).
pub fn observe_codec(observer: impl CodecObserver + 'static) -> bool {
    OBSERVER.set(Box::new(observer)).is_ok()
}

/// [`ProstCodec`], with each encode and decode timed for the [`CodecObserver`].
#[derive(Debug, Clone, Default)]
pub struct TimedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for TimedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = TimedEncoder<T>;
    type Decoder = TimedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        TimedEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        TimedDecoder(self.0.decoder())
    }
}

#[derive(Debug)]
pub struct TimedEncoder<T>(ProstEncoder<T>);

impl<T: prost::Message> Encoder for TimedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let started = Instant::now();
        let encoded = self.0.encode(item, buf);
        if let Some(observer) = OBSERVER.get() {
            observer.encoded(started.elapsed());
        }
        encoded
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[derive(Debug)]
pub struct TimedDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for TimedDecoder<U> {
    type Item = U;
    type Error = Status;

    /// A message that is not valid protobuf of the request's type is the client's
    /// mistake: INVALID_ARGUMENT, not the INTERNAL that prost's codec answers.
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let started = Instant::now();
        let decoded = self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the request message does not decode: {}",
                status.message()
            ))
        });
        if let Some(observer) = OBSERVER.get() {
            observer.decoded(started.elapsed());
        }
        decoded
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
