//! Plumbline's decisions, with no I/O: plain data in (intent, observed cluster, observed
//! hypervisors, the time), plans and readiness verdicts out.

pub mod health;
