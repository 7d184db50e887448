//! The hull agent protocol: the API the shim (host) uses to drive `hull-agent` (guest PID 1).
//!
//! The `.proto` files in `protos/` are the source of truth; this crate compiles them at build
//! time into protobuf messages ([`agent`]) and async ttrpc bindings ([`agent_ttrpc`]) shared
//! by both sides. It also fixes the constants both sides must agree on: the vsock ports and
//! the protocol version. It does not contain transport code (see the shim's `vsock` module
//! for the host side of the hybrid-vsock handshake).

#![deny(missing_docs)]

/// The generated code, with the lints generated code cannot meet switched off once here.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    unused_attributes,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results,
    unused_mut,
    unknown_lints
)]
mod generated {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

/// Protobuf messages of `hull.agent.v1` (generated).
pub use generated::agent;
/// Async ttrpc client and server bindings of `hull.agent.v1` (generated).
pub use generated::agent_ttrpc;

/// The protocol's major version: the `v1` of the `hull.agent.v1` package.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Counts additive, backwards compatible changes to `hull.agent.v1`.
pub const PROTOCOL_MINOR: u32 = 1;

/// vsock port on which the agent serves ttrpc.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// vsock port on the host (CID 2) that the agent connects to once it serves, to announce
/// readiness. The host connects to [`AGENT_VSOCK_PORT`] only after that: a host `CONNECT`
/// that races the guest driver's queue setup can kill the VM's vsock for good with
/// vhost-device-vsock 0.3 (see docs/protocol.md).
pub const READY_VSOCK_PORT: u32 = 1025;
/// vsock port on which the agent accepts stdio streams: each connection starts with the
/// line `STREAM <id>\n` naming the stream (see `StdioStreams` in the protocol).
pub const STDIO_VSOCK_PORT: u32 = 1026;
/// Longest stdio stream id.
pub const MAX_STREAM_ID: usize = 128;
/// The well-known CID of the host.
pub const HOST_CID: u32 = 2;
/// The line the agent writes on the readiness connection, followed by its version.
pub const READY_MAGIC: &str = "HULL-AGENT-READY";

pub use protobuf;
pub use ttrpc;
