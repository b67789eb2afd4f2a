//! Loopback ports for the processes tests start.

use std::net::TcpListener;

use crate::{stack_error, Result};

/// A loopback port that was free a moment ago: bound to port 0 and released at once, for a
/// process that takes its port as an argument.
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| stack_error("finding a free loopback port", e))
}
