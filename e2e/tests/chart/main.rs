//! Tests of the Helm chart (charts/plumbline), its RBAC and its Grafana dashboards.
//! `lint` needs only helm; the others need the stack (`e2e/stack up`).

mod dashboards;
mod install;
mod leader;
mod lint;
mod metrics;
mod support;
mod upgrade;
