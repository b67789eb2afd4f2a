//! Why an intent cannot be planned, with field paths, in the words the `Degraded` condition uses.

use plumbline_crds::conditions::reason;

use crate::{plan::WorkloadRef, tenancy::NotAllowed};

/// One problem at one field, e.g. `spec.schedule[0].timeZone: unknown time zone "Mars/Base"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path in the object, e.g. `spec.schedule[0].end`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// An intent that cannot be planned. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The spec passed admission but is still wrong; every problem found is listed.
    #[error("{}", join(.0))]
    Spec(Vec<FieldError>),
    /// The target workload does not exist.
    #[error("spec.target: {0} not found")]
    TargetNotFound(WorkloadRef),
    /// No TenantPolicy naming the intent's namespace allows what it asks for.
    #[error("{0}")]
    NotAllowed(NotAllowed),
}

impl Invalid {
    /// The `Degraded` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Spec(_) => reason::INVALID_SPEC,
            Invalid::TargetNotFound(_) => reason::TARGET_NOT_FOUND,
            Invalid::NotAllowed(_) => reason::NOT_ALLOWED,
        }
    }

    /// The problems as field errors (one for a missing target).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            Invalid::Spec(errors) => errors.clone(),
            Invalid::TargetNotFound(w) => {
                vec![FieldError::new("spec.target", format!("{w} not found"))]
            }
            Invalid::NotAllowed(n) => vec![FieldError::new("metadata.namespace", n.to_string())],
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
