//! The operator's errors. Each says what was being done to what.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("loading the Kubernetes client configuration: {0}")]
    KubeConfig(String),

    #[error("serving metrics and probes on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("reading {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("parsing {what}: {source}")]
    Yaml {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("finalizing WorkloadIntent {name}: {source}")]
    Finalizer {
        name: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },

    #[error("{0}")]
    Usage(String),

    #[error("the API server serves no {what}; this operator needs it")]
    Unsupported { what: String },

    #[error("not yet listed: {what}")]
    NotSynced { what: &'static str },
    #[error("{0}: no answer before the renew deadline")]
    LeaseDeadline(String),

    #[error("leader loop {0} ended while this replica led")]
    LoopDied(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    /// The API server refused a write because the object changed since it was read; looking
    /// again (soon) is the whole remedy.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// A short, low-cardinality label for the failures metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::KubeConfig(_) => "kubeconfig",
            Error::Http { .. } => "http",
            Error::ReadFile { .. } => "read_file",
            Error::Yaml { .. } | Error::Json { .. } => "serialization",
            Error::Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Error::Usage(_) => "usage",
            Error::Unsupported { .. } => "unsupported",
            Error::NotSynced { .. } => "not_synced",
            Error::LeaseDeadline(_) => "lease_deadline",
            Error::LoopDied(_) => "loop_died",
        }
    }
}
