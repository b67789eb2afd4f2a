//! `plumbline`: parse arguments and run (see `plumbline_operator::cli`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plumbline_operator::main_with_args(std::env::args_os()).await
}
