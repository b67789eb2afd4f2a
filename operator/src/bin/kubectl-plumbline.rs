//! `kubectl-plumbline`: the same program under the name kubectl looks for on PATH, so
//! `kubectl plumbline explain wi/NAME -n NS` works.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plumbline_operator::main_with_args(std::env::args_os()).await
}
