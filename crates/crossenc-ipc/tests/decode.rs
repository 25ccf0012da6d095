//! Arbitrary bytes through the decoder the IPC layer really uses (ipc-channel's
//! `IpcMessage::to`, which `IpcReceiver::recv` calls on every message): a corrupt command
//! or event is an error, never a panic, and a token batch that passes `validate` is read
//! within its bounds whatever its lengths say.
//!
//! One panic is known and tolerated: ipc-channel 0.23 indexes the message's channel
//! handles without a bounds check (a FIXME in its `deserialize_os_ipc_sender` and
//! `deserialize_os_ipc_receiver`), so bytes that decode as far as `WorkerEvent::Hello`'s
//! sender panic there with "index out of bounds". Every other panic fails the test.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crossenc_ipc::{ScoreBatch, TextPairs, TokenBatch, Work, WorkerCommand, WorkerEvent};
use ipc_channel::ipc::{IpcMessage, IpcSharedMemory};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Bytes of one message, as the receiving side decodes them.
fn decode<T>(bytes: &[u8]) -> Option<T>
where
    T: for<'de> Deserialize<'de> + Serialize,
{
    IpcMessage::from_data(bytes.to_vec()).to::<T>().ok()
}

thread_local! {
    /// Where the last panic on this thread happened, as the panic hook saw it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic's message, when it is text.
fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|m| m.to_string()))
        .unwrap_or_default()
}

/// Whether a panic is the known one: an index out of bounds outside this crate (in
/// ipc-channel, or in the standard library on its behalf).
fn is_the_known_panic(message: &str, location: &str) -> bool {
    message.starts_with("index out of bounds") && !location.contains("crossenc-ipc")
}

/// Records where each panic happened, and keeps the known, tolerated one off the test's
/// output.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| l.file().to_string())
                .unwrap_or_default();
            let known = is_the_known_panic(&payload_text(info.payload()), &location);
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(location));
            if !known {
                previous(info);
            }
        }));
    });
}

/// A decoded tokenizer job: a pair naming a missing query is found, never read.
fn check_texts(texts: &TextPairs) {
    let missing = texts
        .pairs
        .iter()
        .position(|(query, _)| *query as usize >= texts.queries.len());
    match texts.resolve() {
        Ok(pairs) => {
            assert_eq!(missing, None);
            assert_eq!(pairs.len(), texts.len());
        }
        Err(pair) => assert_eq!(Some(pair), missing),
    }
    for text in texts
        .queries
        .iter()
        .chain(texts.pairs.iter().map(|(_, d)| d))
    {
        let _ = text.is_cut();
    }
}

/// A token batch from elsewhere: once `validate` says yes, every view lies within the
/// shared memory and the lengths add up.
fn check_batch(batch: &TokenBatch) {
    if batch.validate().is_err() {
        return;
    }
    assert_eq!(batch.iter().len(), batch.len());
    let mut seen = 0;
    for (view, &length) in batch.iter().zip(batch.lengths()) {
        let length = length as usize;
        assert_eq!(view.len(), length);
        assert_eq!(view.ids().len(), length);
        assert_eq!(view.type_ids().len(), length);
        assert_eq!(view.to_pair_tokens().len(), length);
        seen += length;
    }
    assert_eq!(seen, batch.total_tokens());
}

/// What a worker would make of these bytes as a command.
fn check_command(bytes: &[u8]) {
    if let Some(WorkerCommand::Run(job)) = decode::<WorkerCommand>(bytes) {
        if let Work::Encode(texts) = &job.work {
            check_texts(texts);
        }
        if let Work::Score(batch) = &job.work {
            check_batch(batch);
        }
    }
}

/// What the supervisor would make of these bytes as an event.
fn check_event(bytes: &[u8]) -> Result<(), TestCaseError> {
    watch_panics();
    LAST_PANIC.with(|last| last.borrow_mut().take());
    match catch_unwind(AssertUnwindSafe(|| decode::<WorkerEvent>(bytes))) {
        Ok(Some(event)) => {
            if let WorkerEvent::Encoded { tokenized, .. } = &event {
                check_batch(&tokenized.batch);
                // Window counts from a worker are checked against the batch, never trusted.
                let _ = tokenized.owners(tokenized.windows.len());
            }
            if let WorkerEvent::Scored { scores, .. } = &event {
                let _ = scores.to_vec();
            }
        }
        Ok(None) => {}
        Err(payload) => {
            let message = payload_text(&*payload);
            let location = LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_default();
            prop_assert!(
                is_the_known_panic(&message, &location),
                "decoding a WorkerEvent panicked at {location}: {message}"
            );
        }
    }
    Ok(())
}

/// The first bytes of a command with plausible enum tags (`Run`/`Shutdown`, a short job
/// id, `Encode`/`Score`), so that more inputs reach the job's fields.
fn tagged_command() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..3,
        0u8..0x80,
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(command, id, work, rest)| {
            let mut bytes = vec![command, id, work];
            bytes.extend(rest);
            bytes
        })
}

/// `TokenBatch`'s shape on the wire, with fields a test may set to anything.
#[derive(Serialize, Deserialize)]
struct ForgedBatch {
    lengths: Vec<u32>,
    shared: Vec<u32>,
    data: ForgedRegion,
}

/// Where a `TokenBatch`'s bytes are, in the real type's order of variants.
#[derive(Serialize, Deserialize)]
enum ForgedRegion {
    Shared(IpcSharedMemory),
    Inline(Vec<u8>),
}

/// `ScoreBatch`'s shape on the wire.
#[derive(Serialize, Deserialize)]
struct ForgedScores {
    data: Vec<u8>,
}

/// Sends `forged` over a real IPC channel (its shared memory as a real region) and
/// receives it as `T`, as an answer from a worker arrives at the supervisor.
fn through_channel<F, T>(forged: F) -> T
where
    F: for<'de> Deserialize<'de> + Serialize,
    T: for<'de> Deserialize<'de> + Serialize,
{
    let (sender, receiver) = ipc_channel::ipc::channel::<F>().expect("an IPC channel");
    let receiver = receiver.to_opaque().to::<T>();
    sender.send(forged).expect("send the forged value");
    receiver
        .recv()
        .expect("the forged value decodes as the real type")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_command_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check_command(&bytes);
    }

    #[test]
    fn commands_with_plausible_tags_never_panic_the_decoder(bytes in tagged_command()) {
        check_command(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_event_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check_event(&bytes)?;
    }

    #[test]
    fn events_with_plausible_tags_never_panic_the_decoder(
        tag in 0u8..8,
        rest in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        check_event(&bytes)?;
    }

    #[test]
    fn a_token_batch_decoded_from_arbitrary_bytes_is_refused_or_read_within_bounds(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        if let Some(batch) = decode::<TokenBatch>(&bytes) {
            check_batch(&batch);
        }
    }

    #[test]
    fn a_forged_token_batch_is_refused_or_read_within_bounds(
        lengths in prop::collection::vec(prop_oneof![9 => 0u32..64, 1 => any::<u32>()], 0..32),
        exact in any::<bool>(),
        other in 0usize..8192,
        fill in any::<u8>(),
        shared in any::<bool>(),
        raw_prefixes in prop::collection::vec(prop_oneof![3 => Just(0u32), 1 => 0u32..80], 1..33),
        aligned in prop_oneof![4 => Just(true), 1 => Just(false)],
    ) {
        let prefixes: Vec<u32> = match aligned {
            true => raw_prefixes.iter().copied().cycle().take(lengths.len()).collect(),
            false => raw_prefixes,
        };
        let total: usize = lengths.iter().map(|&l| l as usize).sum();
        // Four bytes of id and one of type id per token.
        let promised = total * 5;
        let size = if exact && promised <= 1 << 20 { promised } else { other };
        let data = match shared {
            true => ForgedRegion::Shared(IpcSharedMemory::from_byte(fill, size)),
            false => ForgedRegion::Inline(vec![fill; size]),
        };
        let batch: TokenBatch = through_channel(ForgedBatch {
            lengths: lengths.clone(),
            shared: prefixes.clone(),
            data,
        });
        // Each pair's shared prefix, if any, is shorter than the pair.
        let prefixes_fit = prefixes.len() == lengths.len()
            && prefixes.iter().zip(&lengths).all(|(s, l)| *s == 0 || s < l);
        // What the supervisor checks before it reads a worker's batch.
        prop_assert_eq!(batch.is_inline(), !shared);
        prop_assert_eq!(batch.lengths(), &lengths[..]);
        prop_assert_eq!(batch.validate().is_ok(), size == promised && prefixes_fit);
        check_batch(&batch);
        if batch.validate().is_ok() {
            let id = u32::from_le_bytes([fill; 4]);
            for view in batch.iter() {
                prop_assert!(view.ids().all(|i| i == id));
                prop_assert!(view.type_ids().iter().all(|&t| t == fill));
            }
        }
    }

    #[test]
    fn forged_scores_of_any_size_are_read_within_bounds(
        size in 0usize..4096,
        fill in any::<u8>(),
    ) {
        let scores: ScoreBatch = through_channel(ForgedScores {
            data: vec![fill; size],
        });
        prop_assert_eq!(scores.to_vec().len(), size / 4);
    }
}
