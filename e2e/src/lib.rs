//! Test support: reach the real local stack started by `e2e/stack up`.
//!
//! The stack writes `$PLUMBLINE_STACK_DIR/env` (plain `KEY=VALUE` lines). Every accessor
//! fails with a message that says how to start the stack, so a test that needs it never
//! silently passes without it.

pub mod latency;

use std::{collections::HashMap, path::PathBuf};

pub const DEFAULT_STACK_DIR: &str = "/var/tmp/plumbline-stack";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the stack is not up (no {path}): start it with `e2e/stack up`")]
    NotUp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the stack env {path} has no {key}: restart the stack with `e2e/stack down && e2e/stack up`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{what}: {message}")]
    Stack { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The running stack, as described by its env file.
#[derive(Debug, Clone)]
pub struct Stack {
    env_path: PathBuf,
    env: HashMap<String, String>,
}

impl Stack {
    /// Reads `$PLUMBLINE_STACK_DIR/env` (default `/var/tmp/plumbline-stack/env`).
    pub fn load() -> Result<Self> {
        let dir = std::env::var_os("PLUMBLINE_STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STACK_DIR));
        let env_path = dir.join("env");
        let text = std::fs::read_to_string(&env_path).map_err(|source| Error::NotUp {
            path: env_path.clone(),
            source,
        })?;
        let env = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Self { env_path, env })
    }

    /// A value the stack recorded, e.g. `LIBVIRT_URI`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::MissingKey {
                path: self.env_path.clone(),
                key: key.to_string(),
            })
    }

    /// Path to the `e2e/stack` script of this checkout, for helpers that shell out to it.
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stack")
    }
}
