//! hull-agent's library: everything the `hull-agent` binary runs, split out so integration
//! tests can drive it in their own processes (the reaper waits for any child, which must not
//! race other tests' children in one test binary).

pub mod build;
pub mod init;
pub mod logger;
pub mod ready;
pub mod reaper;
pub mod sandbox;
pub mod service;
pub mod stdio;
pub mod streams;
