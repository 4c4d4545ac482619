//! A TCP fault proxy between the app and PostgreSQL/Redis, so tests inject failures
//! without touching the shared servers.
//!
//! Modes: `Pass` forwards; `Refuse` resets every connection (new and existing) at once;
//! `Blackhole` accepts and never answers, and freezes existing connections, until the
//! mode changes (then they are reset). `reset_connections` resets the open connections
//! once, like a server restart.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Blackhole,
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let (generation, _) = watch::channel(0u64);
        let (mode_tx, gen_tx) = (mode.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                let mode_rx = mode_tx.subscribe();
                let gen_rx = gen_tx.subscribe();
                tokio::spawn(handle(inbound, upstream, mode_rx, gen_rx));
            }
        });
        Self {
            addr,
            mode,
            generation,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_if_modified(|m| {
            let changed = *m != mode;
            *m = mode;
            changed
        });
    }

    /// Resets every open connection once; new ones are served per the mode.
    pub fn reset_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn handle(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut generation: watch::Receiver<u64>,
) {
    generation.borrow_and_update();
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return reset(inbound),
        Mode::Blackhole => {
            let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
            return reset(inbound);
        }
        Mode::Pass => {}
    }
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await
    else {
        return reset(inbound);
    };
    let mut inbound = inbound;
    let frozen = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = generation.changed() => false,
        changed = mode.wait_for(|m| *m != Mode::Pass) => changed.is_ok_and(|m| *m == Mode::Blackhole),
    };
    if frozen {
        // Hold both ends open and silent until the blackhole ends.
        let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
    }
    reset(inbound);
    reset(outbound);
}
