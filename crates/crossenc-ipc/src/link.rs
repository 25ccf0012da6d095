use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};

#[cfg(test)]
use crate::{Job, Work};
use crate::{StatsReport, WorkerCommand, WorkerEvent};

/// An IPC operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum IpcFailure {
    #[error("could not {doing}: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not {doing}: {message}")]
    Channel {
        doing: &'static str,
        message: String,
    },
    #[error("the worker sent {got} where a Hello was expected")]
    NoHello { got: String },
    #[error("the worker went away before it connected")]
    Abandoned,
}

impl IpcFailure {
    fn channel(doing: &'static str, error: impl std::fmt::Display) -> Self {
        IpcFailure::Channel {
            doing,
            message: error.to_string(),
        }
    }
}

/// The supervisor's side of one worker's handshake: a named one-shot server that the
/// worker connects to.
pub struct WorkerListener {
    server: IpcOneShotServer<WorkerEvent>,
    name: String,
}

/// Both directions of one established worker link, as the supervisor holds them.
pub struct SupervisorLink {
    pub pid: u32,
    pub commands: IpcSender<WorkerCommand>,
    pub events: IpcReceiver<WorkerEvent>,
    pub stats: IpcReceiver<StatsReport>,
}

/// Both directions of one established link, as the worker holds them.
pub struct WorkerLink {
    pub events: IpcSender<WorkerEvent>,
    pub commands: IpcReceiver<WorkerCommand>,
    pub stats: IpcSender<StatsReport>,
}

impl WorkerListener {
    pub fn new() -> Result<Self, IpcFailure> {
        let (server, name) = IpcOneShotServer::new().map_err(|source| IpcFailure::Io {
            doing: "create the worker handshake server",
            source,
        })?;
        Ok(Self { server, name })
    }

    /// The name to hand to the worker (on its command line).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the worker's Hello. Blocks until it connects or [`WorkerListener::abandon`]
    /// is called with this listener's name.
    pub fn accept(self) -> Result<SupervisorLink, IpcFailure> {
        let (events, first) = self
            .server
            .accept()
            .map_err(|e| IpcFailure::channel("accept the worker's connection", e))?;
        match first {
            WorkerEvent::Hello {
                pid,
                commands,
                stats,
            } => Ok(SupervisorLink {
                pid,
                commands,
                events,
                stats,
            }),
            WorkerEvent::Abandoned => Err(IpcFailure::Abandoned),
            other => Err(IpcFailure::NoHello {
                got: format!("{other:?}"),
            }),
        }
    }

    /// Unblocks a pending [`WorkerListener::accept`] on `name`, for a worker that died
    /// before it connected.
    pub fn abandon(name: &str) {
        if let Ok(sender) = IpcSender::<WorkerEvent>::connect(name.to_string()) {
            let _ = sender.send(WorkerEvent::Abandoned);
        }
    }
}

/// The worker's side: connects to the supervisor's server and says Hello.
pub fn connect_to_supervisor(server_name: &str) -> Result<WorkerLink, IpcFailure> {
    let events = IpcSender::<WorkerEvent>::connect(server_name.to_string()).map_err(|source| {
        IpcFailure::Io {
            doing: "connect to the supervisor",
            source,
        }
    })?;
    let (commands_tx, commands_rx) = ipc::channel().map_err(|source| IpcFailure::Io {
        doing: "create the command channel",
        source,
    })?;
    let (stats_tx, stats_rx) = ipc::channel().map_err(|source| IpcFailure::Io {
        doing: "create the stats channel",
        source,
    })?;
    events
        .send(WorkerEvent::Hello {
            pid: std::process::id(),
            commands: commands_tx,
            stats: stats_rx,
        })
        .map_err(|e| IpcFailure::channel("send Hello to the supervisor", e))?;
    Ok(WorkerLink {
        events,
        commands: commands_rx,
        stats: stats_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_pair() -> crate::TextPairs {
        crate::TextPairs {
            queries: vec![crate::Text::cut("q", 10)],
            pairs: vec![(0, crate::Text::cut("d", 10))],
            ..Default::default()
        }
    }

    #[test]
    fn handshake_then_commands_flow() {
        let listener = WorkerListener::new().unwrap();
        let name = listener.name().to_string();
        let worker = std::thread::spawn(move || {
            let WorkerLink {
                events, commands, ..
            } = connect_to_supervisor(&name).unwrap();
            match commands.recv().unwrap() {
                WorkerCommand::Run(Job {
                    id,
                    work: Work::Encode(pairs),
                    ..
                }) => {
                    assert_eq!(pairs, one_pair());
                    events
                        .send(WorkerEvent::JobFailed {
                            job: id,
                            message: "done".into(),
                        })
                        .unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        });
        let link = listener.accept().unwrap();
        assert_eq!(link.pid, std::process::id());
        link.commands
            .send(WorkerCommand::Run(Job {
                id: 7,
                work: Work::Encode(one_pair()),
                requests: vec![crate::RequestId::generate()],
                sent_at: crate::Stamp::now(),
            }))
            .unwrap();
        match link.events.recv().unwrap() {
            WorkerEvent::JobFailed { job, message } => {
                assert_eq!((job, message.as_str()), (7, "done"))
            }
            other => panic!("unexpected {other:?}"),
        }
        worker.join().unwrap();
    }

    #[test]
    fn abandon_unblocks_accept() {
        let listener = WorkerListener::new().unwrap();
        let name = listener.name().to_string();
        let waiter = std::thread::spawn(move || listener.accept());
        WorkerListener::abandon(&name);
        assert!(matches!(waiter.join().unwrap(), Err(IpcFailure::Abandoned)));
    }
}
