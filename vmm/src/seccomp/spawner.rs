//! The device-thread spawner: virtio device threads are created here, not on the vCPU
//! thread that activates the device, so that they are not bound by the vCPU filter.
//!
//! A vCPU thread that calls [`spawn_device_thread`] hands the thread's body to the spawner
//! thread over a channel and waits for the answer; the spawner creates the thread, which
//! installs the device filter first and then runs the body. Without a spawner bound to the
//! calling thread (seccomp off, unit tests, the builder), [`spawn_device_thread`] creates the
//! thread directly, as before.

use std::cell::RefCell;
use std::sync::mpsc;
use std::sync::Arc;

use super::{Filters, SeccompError, ThreadKind};

type Body = Box<dyn FnOnce() + Send + 'static>;

struct Request {
    name: String,
    body: Body,
    /// Ok once the new thread runs under the device filter.
    reply: mpsc::SyncSender<std::io::Result<()>>,
}

/// A handle on the spawner thread.
#[derive(Debug, Clone)]
pub struct DeviceSpawner {
    tx: mpsc::Sender<Request>,
}

thread_local! {
    static CURRENT: RefCell<Option<DeviceSpawner>> = const { RefCell::new(None) };
}

impl DeviceSpawner {
    /// Starts the spawner thread; returns once it runs under its filter.
    pub fn start(filters: Arc<Filters>) -> Result<Self, SeccompError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let started = std::thread::Builder::new()
            .name("dev-spawner".into())
            .spawn(move || {
                let installed = filters.install(ThreadKind::Spawner);
                let ok = installed.is_ok();
                let _ = ready_tx.send(installed);
                if ok {
                    serve(&filters, rx);
                }
            });
        if let Err(e) = started {
            return Err(SeccompError::StartSpawner(e));
        }
        ready_rx
            .recv()
            .map_err(|_| SeccompError::StartSpawner(std::io::ErrorKind::BrokenPipe.into()))??;
        Ok(DeviceSpawner { tx })
    }

    /// Makes this the spawner [`spawn_device_thread`] uses on the calling thread.
    pub fn bind_to_current_thread(self) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self));
    }
}

/// The spawner's loop: one device thread per request, until every handle is gone.
fn serve(filters: &Arc<Filters>, rx: mpsc::Receiver<Request>) {
    while let Ok(Request { name, body, reply }) = rx.recv() {
        let filters = filters.clone();
        let child_reply = reply.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            match filters.install(ThreadKind::Device) {
                Ok(()) => {
                    let _ = child_reply.send(Ok(()));
                    body();
                }
                Err(e) => {
                    let _ = child_reply.send(Err(std::io::Error::other(e.to_string())));
                }
            }
        });
        if let Err(e) = spawned {
            let _ = reply.send(Err(e));
        }
    }
}

/// Starts a virtio device thread named `name` running `body`: through the calling thread's
/// spawner (under the device filter) if it has one, directly otherwise. Returns once the
/// thread runs (or failed to start).
pub fn spawn_device_thread<F>(name: &str, body: F) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    let spawner = CURRENT.with(|c| c.borrow().clone());
    let Some(spawner) = spawner else {
        return std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map(drop);
    };
    let (reply, answer) = mpsc::sync_channel(1);
    spawner
        .tx
        .send(Request {
            name: name.into(),
            body: Box::new(body),
            reply,
        })
        .map_err(|_| std::io::Error::other("the device spawner is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the device spawner did not answer"))?
}
