//! `plumbline explain`: the plan for an intent, per layer with reasons, computed exactly as the
//! controller computes it, against the live cluster; or, for `hostmaintenance/NAME`, what the
//! maintenance's next pass would do ([`crate::maintenance::explain`]). Reads only; changes
//! nothing.

use kube::{Api, Client, ResourceExt};
use plumbline_crds::WorkloadIntent;
use plumbline_policies::{self as policies, Plan};
use std::io::Read;

use crate::{
    cli::{ExplainArgs, ExplainOutput},
    clock::Clock,
    controller::{list_intents, observe, plan_for},
    discovery::ServedApis,
    Error, Result,
};

/// What `explain` found: a plan, or why there is none.
#[derive(Debug)]
pub enum Explanation {
    Plan(Plan),
    Invalid(policies::Invalid),
    Conflict { with: String },
}

impl Explanation {
    pub fn render(&self, wi: &WorkloadIntent, output: ExplainOutput) -> Result<String> {
        let header = format!(
            "WorkloadIntent {}/{}\n",
            wi.namespace().unwrap_or_default(),
            wi.name_any()
        );
        match (self, output) {
            (Explanation::Plan(plan), ExplainOutput::Text) => Ok(format!("{header}{}", policies::explain(plan))),
            (Explanation::Plan(plan), ExplainOutput::Yaml) => serde_yaml::to_string(&policies::plan_to_status(plan))
                .map_err(|source| Error::Yaml { what: "the plan".into(), source }),
            (Explanation::Plan(plan), ExplainOutput::Json) => serde_json::to_string_pretty(&policies::plan_to_status(plan))
                .map(|s| s + "\n")
                .map_err(|source| Error::Json { what: "encoding the plan".into(), source }),
            (Explanation::Invalid(invalid), _) => Ok(format!("{header}{}", policies::explain_invalid(invalid))),
            (Explanation::Conflict { with }, _) => Ok(format!(
                "{header}Nothing would be applied (ConflictingIntent): {:?} {} is already governed by WorkloadIntent {with}\n",
                wi.spec.target.kind, wi.spec.target.name
            )),
        }
    }
}

/// Plans `wi` against the live cluster at the clock's time.
pub async fn explain_intent(
    client: &Client,
    wi: &WorkloadIntent,
    clock: &dyn Clock,
) -> Result<Explanation> {
    let apis = ServedApis::discover(client).await?;
    let namespace = wi.namespace().unwrap_or_default();
    let mut intents = list_intents(client, &namespace).await?;
    // A manifest not yet applied competes with what is in the cluster as if it were the newest.
    if !intents.iter().any(|i| i.name_any() == wi.name_any()) {
        intents.push(wi.clone());
    }
    let observed = observe(client, &apis, wi, &intents).await?;
    if let Some(with) = observed.conflicting {
        return Ok(Explanation::Conflict { with });
    }
    let tenants = crate::tenancy::list_policies(client).await?;
    Ok(match plan_for(wi, &observed, &tenants, clock.now()) {
        Ok(plan) => Explanation::Plan(plan),
        Err(invalid) => Explanation::Invalid(invalid),
    })
}

/// Loads the intent named by the arguments: from a manifest (status taken from the cluster if
/// the intent exists there, so the plan knows what was applied) or from the cluster.
pub async fn load_intent(client: &Client, args: &ExplainArgs) -> Result<WorkloadIntent> {
    let default_ns = client.default_namespace().to_string();
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| Error::ReadFile {
                    path: "stdin".into(),
                    source,
                })?;
            s
        } else {
            std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
                path: path.display().to_string(),
                source,
            })?
        };
        let value: serde_json::Value =
            serde_yaml::from_str(&text).map_err(|source| Error::Yaml {
                what: format!("{} as a WorkloadIntent", path.display()),
                source,
            })?;
        // Read as the operator reads a stored intent: unknown and unreadable fields become
        // field errors the plan reports, not a parse failure.
        let mut wi = crate::controller::lenient::decode_manifest(value).map_err(|errors| {
            Error::Usage(format!(
                "{} is not a WorkloadIntent: {}",
                path.display(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let namespace = args
            .namespace
            .clone()
            .or_else(|| wi.namespace())
            .unwrap_or(default_ns);
        wi.metadata.namespace = Some(namespace.clone());
        if let Some(live) = Api::<WorkloadIntent>::namespaced(client.clone(), &namespace)
            .get_opt(&wi.name_any())
            .await
            .map_err(|source| {
                Error::kube(
                    format!("reading WorkloadIntent {namespace}/{}", wi.name_any()),
                    source,
                )
            })?
        {
            wi.status = live.status;
            wi.metadata.creation_timestamp = live.metadata.creation_timestamp;
            wi.metadata.uid = live.metadata.uid;
        }
        return Ok(wi);
    }
    let reference = args.intent.as_deref().unwrap_or_default();
    let name = match reference.split_once('/') {
        Some((kind, name))
            if [
                "wi",
                "workloadintent",
                "workloadintents",
                "workloadintent.plumbline.dev",
            ]
            .contains(&kind.to_ascii_lowercase().as_str()) =>
        {
            name
        }
        Some((kind, _)) => {
            return Err(Error::Usage(format!(
            "explain takes a WorkloadIntent (wi/NAME) or a HostMaintenance (hm/NAME), not {kind}"
        )))
        }
        None => reference,
    };
    let namespace = args.namespace.clone().unwrap_or(default_ns);
    Api::<WorkloadIntent>::namespaced(client.clone(), &namespace)
        .get(name)
        .await
        .map_err(|source| Error::kube(format!("reading WorkloadIntent {namespace}/{name}"), source))
}

/// The HostMaintenance an `explain` argument names (`hm/NAME`, `hostmaintenance/NAME`).
fn maintenance_named(reference: &str) -> Option<&str> {
    let (kind, name) = reference.split_once('/')?;
    [
        "hm",
        "hostmaintenance",
        "hostmaintenances",
        "hostmaintenance.plumbline.dev",
    ]
    .contains(&kind.to_ascii_lowercase().as_str())
    .then_some(name)
}

/// The `explain` command: load, plan, render.
pub async fn explain(client: Client, args: &ExplainArgs, clock: &dyn Clock) -> Result<String> {
    if let Some(name) = args.intent.as_deref().and_then(maintenance_named) {
        let now = args.at.unwrap_or_else(|| clock.now());
        return crate::maintenance::explain::explain_maintenance(
            &client,
            name,
            args.output,
            now.into(),
        )
        .await;
    }
    let wi = load_intent(&client, args).await?;
    let now = args.at.unwrap_or_else(|| clock.now());
    // Signals are evaluated live, with the same decision the controller runs.
    let source = crate::prometheus::Source::new(args.prometheus.settings());
    let evaluated = crate::controller::signals::evaluate(&source, &wi, now, true).await;
    let lines = crate::controller::signals::outlook(&evaluated, now);
    let wi = evaluated.intent;
    let text = match args.at {
        Some(at) => explain_intent(&client, &wi, &crate::clock::ManualClock::new(at)).await?,
        None => explain_intent(&client, &wi, clock).await?,
    }
    .render(&wi, args.output)?;
    Ok(with_signals(text, &lines, args.output))
}

/// The text with a "Signals" block after its `Active:` line (text output only).
fn with_signals(text: String, lines: &[String], output: ExplainOutput) -> String {
    if lines.is_empty() || output != ExplainOutput::Text {
        return text;
    }
    let block: String = std::iter::once("Signals (evaluated live):".to_string())
        .chain(lines.iter().map(|l| format!("  {l}")))
        .map(|l| l + "\n")
        .collect();
    match text
        .find("\nActive: ")
        .and_then(|i| text[i + 1..].find('\n').map(|j| i + 1 + j + 1))
    {
        Some(at) => format!("{}{block}{}", &text[..at], &text[at..]),
        None => format!("{text}{block}"),
    }
}
