//! The worker's end of the stats channel.

use std::sync::mpsc::{self, SyncSender, TrySendError};

use crossenc_ipc::{IpcSender, StatsReport};

/// Reports waiting for the stats thread; beyond this they are dropped and counted.
const QUEUE: usize = 256;

/// Hands [`StatsReport`]s to a thread that writes them to the stats channel, so that a
/// supervisor slow to read them (or gone) never holds up the worker's jobs: when the
/// queue is full a report is dropped, and the next one that gets through says how many.
pub struct StatsSender {
    queue: SyncSender<StatsReport>,
    dropped: u64,
}

impl StatsSender {
    pub fn start(channel: IpcSender<StatsReport>) -> Self {
        let (queue, reports) = mpsc::sync_channel::<StatsReport>(QUEUE);
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                for report in reports {
                    if channel.send(report).is_err() {
                        return;
                    }
                }
            })
            .expect("the OS refused the worker a thread");
        Self { queue, dropped: 0 }
    }

    /// Queues a report without waiting.
    pub fn report(&mut self, mut report: StatsReport) {
        report.dropped = self.dropped;
        match self.queue.try_send(report) {
            Ok(()) => self.dropped = 0,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    /// Reports dropped since the last one that was queued.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_reader_that_never_reads_does_not_block_the_sender() {
        let (channel, unread) = crossenc_ipc::channel::<StatsReport>().unwrap();
        let mut stats = StatsSender::start(channel);
        let report = StatsReport {
            pairs: 64,
            tokens: 4096,
            ..StatsReport::default()
        };
        // Far more than the socket buffer and the queue hold together.
        let started = Instant::now();
        for _ in 0..200_000 {
            stats.report(report.clone());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "reporting blocked on the unread channel"
        );
        assert!(
            stats.dropped() > 0,
            "the full queue should have dropped reports"
        );
        drop(unread);
    }

    #[test]
    fn reports_arrive_and_say_how_many_were_dropped() {
        let (channel, reader) = crossenc_ipc::channel::<StatsReport>().unwrap();
        let mut stats = StatsSender::start(channel);
        stats.dropped = 3;
        stats.report(StatsReport {
            pairs: 2,
            ..StatsReport::default()
        });
        let got = reader.recv().unwrap();
        assert_eq!((got.pairs, got.dropped), (2, 3));
        assert_eq!(stats.dropped(), 0);
    }
}
