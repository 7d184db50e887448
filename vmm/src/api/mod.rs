//! The control socket (`--api-sock PATH`): how the shim pauses, resumes, stops and inspects
//! a running hull-vmm.
//!
//! A unix stream socket that hull-vmm creates at start and removes at exit; one JSON object
//! per line each way ([`protocol`] documents the commands and replies); served by
//! [`server::ApiServer`] from the VMM thread's event loop.
//!
//! Why the VMM thread and not a thread of its own: that thread has nothing else to do while
//! the vCPUs run (it used to block on the exit eventfd alone), it is the one that owns the
//! vCPU threads' handles (needed to kick them) and the VM's end, and requests are rare and
//! short. Serving there costs no extra thread (stack, seccomp filter, locking between an API
//! thread and the VMM) and makes `shutdown` and the guest's own end race-free: both arrive
//! on the same epoll. A `pause` blocks the loop until the vCPUs park (bounded by a timeout),
//! which is what its caller waits for anyway.
//!
//! Not here: authentication (the socket's file mode and directory are the access control;
//! the shim creates it in the pod's private state directory), snapshots, hot-plug.

pub mod protocol;
pub mod server;

pub use protocol::{Request, Response};
pub use server::{ApiServer, Handler};
