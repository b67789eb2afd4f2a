//! A small typed client for Prometheus's HTTP API (`/api/v1/query`), for the signals of
//! `spec.activation` (docs/activation.md). One instant query per call; one sample expected.

use std::{path::PathBuf, time::Duration};

use plumbline_policies::activation::Reading;
use serde::Deserialize;

/// Where Prometheus is (`--prometheus-url`, `--prometheus-bearer-token-file`,
/// `--prometheus-ca-file`, `--prometheus-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusSettings {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// A file holding a bearer token, re-read on every query (so a rotated token is used).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA bundle to verify an `https://` Prometheus with (default: public roots).
    pub ca_file: Option<PathBuf>,
    /// Per-query timeout.
    pub timeout: Duration,
}

/// Why a query gave no sample.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Prometheus rejected the query (`errorType` `bad_data`): a PromQL mistake. Not retried
    /// any sooner than the signal's interval; reported as `InvalidSignal`.
    #[error("{0}")]
    BadQuery(String),
    #[error("no answer from Prometheus within {0:?}")]
    Timeout(Duration),
    #[error("Prometheus at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("Prometheus answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error(
        "the query returned {0} series; a signal needs exactly one (aggregate it, e.g. with sum())"
    )]
    NotOneSample(usize),
    #[error("unexpected answer from Prometheus: {0}")]
    Decode(String),
    #[error("reading the bearer token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("no Prometheus configured: set --prometheus-url (PLUMBLINE_PROMETHEUS_URL, chart value prometheus.url)")]
    NotConfigured,
    #[error("the Prometheus client cannot be built: {0}")]
    Setup(String),
}

impl QueryError {
    /// The reading the activation decision sees.
    pub fn reading(&self) -> Reading {
        Reading::Failed {
            message: self.to_string(),
            invalid: matches!(self, QueryError::BadQuery(_)),
        }
    }
}

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    query_url: String,
    settings: PrometheusSettings,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Series {
    value: (f64, String),
}

impl Prometheus {
    pub fn new(settings: PrometheusSettings) -> Result<Self, QueryError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout);
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| QueryError::Setup(format!("reading {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| QueryError::Setup(format!("{}: {e}", path.display())))?;
            builder = certs
                .into_iter()
                .fold(builder, |b, c| b.add_root_certificate(c));
        }
        let http = builder
            .build()
            .map_err(|e| QueryError::Setup(e.to_string()))?;
        let query_url = format!("{}/api/v1/query", settings.url.trim_end_matches('/'));
        Ok(Self {
            http,
            query_url,
            settings,
        })
    }

    /// Runs an instant query: `Some(value)` for one sample, `None` for no series.
    pub async fn query(&self, promql: &str) -> Result<Option<f64>, QueryError> {
        let mut request = self.http.post(&self.query_url).form(&[("query", promql)]);
        if let Some(path) = &self.settings.bearer_token_file {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| QueryError::Token {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            request = request.bearer_auth(token.trim());
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.transport(e))?;
        let answer: Answer = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(_) if !status.is_success() => {
                return Err(QueryError::Http {
                    status: status.as_u16(),
                    message: body.chars().take(300).collect(),
                })
            }
            Err(e) => return Err(QueryError::Decode(e.to_string())),
        };
        if answer.status != "success" {
            let message = answer
                .error
                .unwrap_or_else(|| body.chars().take(300).collect());
            return Err(match answer.error_type.as_deref() {
                Some("bad_data") => QueryError::BadQuery(message),
                Some("timeout") => QueryError::Timeout(self.settings.timeout),
                _ => QueryError::Http {
                    status: status.as_u16(),
                    message,
                },
            });
        }
        match answer.data {
            Some(Data::Vector(series)) => match series.as_slice() {
                [] => Ok(None),
                [one] => parse_value(&one.value.1).map(Some),
                many => Err(QueryError::NotOneSample(many.len())),
            },
            Some(Data::Scalar((_, v))) => parse_value(&v).map(Some),
            Some(Data::Matrix(_)) => Err(QueryError::BadQuery(
                "the query returns a range vector; a signal needs an instant value (drop the [range] or wrap it, e.g. in rate())".into(),
            )),
            Some(Data::String(_)) => Err(QueryError::BadQuery(
                "the query returns a string; a signal needs a number".into(),
            )),
            None => Err(QueryError::Decode("no data in a successful answer".into())),
        }
    }

    /// Runs the query and turns the outcome into the decision's terms.
    pub async fn read(&self, promql: &str) -> Reading {
        match self.query(promql).await {
            Ok(Some(v)) => Reading::Value(v),
            Ok(None) => Reading::Empty,
            Err(e) => e.reading(),
        }
    }

    fn transport(&self, e: reqwest::Error) -> QueryError {
        if e.is_timeout() {
            QueryError::Timeout(self.settings.timeout)
        } else {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            QueryError::Unreachable {
                url: self.settings.url.clone(),
                message,
            }
        }
    }
}

/// Prometheus writes sample values as strings: `"612"`, `"NaN"`, `"+Inf"`.
fn parse_value(text: &str) -> Result<f64, QueryError> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse()
            .map_err(|_| QueryError::Decode(format!("{text:?} is not a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_to_one_sample_none_or_a_typed_error() {
        let vector: Answer = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"612"]}]}}"#,
        )
        .unwrap();
        assert!(matches!(vector.data, Some(Data::Vector(ref s)) if s[0].value.1 == "612"));
        let error: Answer = serde_json::from_str(
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#,
        )
        .unwrap();
        assert_eq!(error.error_type.as_deref(), Some("bad_data"));
        assert_eq!(parse_value("+Inf").unwrap(), f64::INFINITY);
        assert!(parse_value("x").is_err());
    }
}

/// Where signals are read: the configured Prometheus, or why there is none. Each term's
/// `Context` carries one.
#[derive(Debug, Clone)]
pub struct Source(Result<Prometheus, String>);

impl Source {
    /// From the operator's settings; a setup problem (unreadable CA file) is reported on every
    /// signal instead of stopping the operator.
    pub fn new(settings: Option<PrometheusSettings>) -> Self {
        Source(match settings {
            None => Err(QueryError::NotConfigured.to_string()),
            Some(s) => Prometheus::new(s).map_err(|e| e.to_string()),
        })
    }

    /// One reading of `promql`.
    pub async fn read(&self, promql: &str) -> Reading {
        match &self.0 {
            Ok(p) => p.read(promql).await,
            Err(message) => Reading::Failed {
                message: message.clone(),
                invalid: false,
            },
        }
    }
}

impl Default for Source {
    fn default() -> Self {
        Source::new(None)
    }
}
