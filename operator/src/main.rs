//! `plumbline`: parse arguments and run (see `plumbline_operator::cli`).

/// jemalloc, not glibc's allocator (`plumbline_adapters::allocator`).
#[global_allocator]
static ALLOCATOR: plumbline_adapters::allocator::Jemalloc = plumbline_adapters::allocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plumbline_operator::main_with_args(std::env::args_os()).await
}
