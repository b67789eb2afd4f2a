use crate::{cli::ExplainArgs, clock::Clock, Result};
pub async fn explain(_client: kube::Client, _args: &ExplainArgs, _clock: &dyn Clock) -> Result<String> { Ok(String::new()) }
