//! SOAP transport for vim25: envelopes in, bodies or typed faults out.

use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};

use crate::xml::{Element, XmlError};
use crate::{Error, Result, TlsTrust};

/// The largest response body read from a vSphere endpoint. A property-collector page for a
/// few hundred VMs with their devices is a few MiB; a QueryPerf answer for a host's VMs
/// less. The body is read in chunks and reading stops at the limit, so an endless or huge
/// body costs at most this much memory (plus the parsed tree).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const VIM25: &str = "urn:vim25";
/// The vim25 release whose schema the requests follow.
const SOAP_ACTION: &str = "urn:vim25/6.7";
const SESSION_COOKIE: &str = "vmware_soap_session";

/// A SOAP fault: the vim25 fault type (from `detail`) and the server's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: String,
    pub message: String,
}

pub enum Outcome {
    Body(Element),
    Fault(Fault),
}

/// Why a response body is not a SOAP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadResponse {
    /// Elements nest deeper than the reader's limit.
    TooDeep { limit: usize },
    /// Not XML, or not a SOAP envelope with a body.
    Invalid(String),
}

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooDeep { limit } => write!(f, "elements nest deeper than {limit} levels"),
            Self::Invalid(message) => f.write_str(message),
        }
    }
}

/// One HTTP client bound to one SDK URL. Holds no session: the caller passes the cookie.
#[derive(Clone)]
pub struct SoapClient {
    http: reqwest::Client,
    url: String,
}

impl std::fmt::Debug for SoapClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapClient")
            .field("url", &self.url)
            .finish()
    }
}

impl SoapClient {
    pub fn new(url: &str, tls: &TlsTrust, timeout: Duration) -> Result<Self> {
        let tls_err = |source| Error::Tls {
            url: url.to_string(),
            source,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            // A redirect would re-send the request body (the Login carries the password) to
            // wherever the server points: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .use_rustls_tls();
        builder = match tls {
            TlsTrust::PublicRoots => builder,
            TlsTrust::CaPem(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(tls_err)?;
                if certs.is_empty() {
                    return Err(Error::Config {
                        message: format!("the CA bundle for {url} holds no PEM certificate"),
                    });
                }
                certs
                    .into_iter()
                    .fold(builder.tls_built_in_root_certs(false), |b, c| {
                        b.add_root_certificate(c)
                    })
            }
            TlsTrust::Insecure => {
                tracing::warn!(%url, "TLS certificate verification is disabled for this vSphere endpoint");
                builder.danger_accept_invalid_certs(true)
            }
        };
        Ok(Self {
            http: builder.build().map_err(tls_err)?,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `request` (a vim25 method element) and returns the response body element, a
    /// fault, and any session cookie the server set.
    pub async fn call(
        &self,
        action: &str,
        request: Element,
        cookie: Option<&str>,
    ) -> Result<(Outcome, Option<String>)> {
        let envelope = envelope(request.attr("xmlns", VIM25));
        let mut req = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(envelope.to_xml());
        if let Some(cookie) = cookie {
            req = req.header(COOKIE, format!("{SESSION_COOKIE}={cookie}"));
        }
        let http_err = |source| Error::Http {
            action: action.to_string(),
            url: self.url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status();
        let new_cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .find_map(session_cookie);
        let bytes = match read_body(resp, MAX_RESPONSE_BYTES).await {
            Ok(bytes) => bytes,
            Err(BodyError::Http(source)) => return Err(http_err(source)),
            Err(BodyError::TooLarge) => {
                return Err(Error::ResponseTooLarge {
                    action: action.to_string(),
                    url: self.url.clone(),
                    limit: MAX_RESPONSE_BYTES,
                })
            }
        };
        let outcome = parse_response(&bytes).map_err(|bad| match bad {
            BadResponse::TooDeep { limit } => Error::ResponseTooDeep {
                action: action.to_string(),
                url: self.url.clone(),
                limit,
            },
            BadResponse::Invalid(message) => Error::Protocol {
                action: action.to_string(),
                url: self.url.clone(),
                message: format!("HTTP {status}: {message}"),
            },
        })?;
        Ok((outcome, new_cookie))
    }
}

enum BodyError {
    Http(reqwest::Error),
    TooLarge,
}

/// Reads the body chunk by chunk, giving up as soon as it would exceed `limit` bytes (at
/// once when `Content-Length` says so). Dropping the response closes the connection.
async fn read_body(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Http)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn envelope(body: Element) -> Element {
    Element::new("soapenv:Envelope")
        .attr("xmlns:soapenv", SOAP_ENV)
        .attr("xmlns:xsd", "http://www.w3.org/2001/XMLSchema")
        .attr("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance")
        .child(Element::new("soapenv:Body").child(body))
}

fn session_cookie(header: &HeaderValue) -> Option<String> {
    let header = header.to_str().ok()?;
    let first = header.split(';').next()?.trim();
    let (name, value) = first.split_once('=')?;
    (name == SESSION_COOKIE).then(|| value.trim_matches('"').to_string())
}

/// The single element inside `soapenv:Body`, or the fault it carries.
pub fn parse_response(bytes: &[u8]) -> std::result::Result<Outcome, BadResponse> {
    let mut root = Element::parse(bytes).map_err(|e| match e {
        XmlError::TooDeep { limit } => BadResponse::TooDeep { limit },
        e => BadResponse::Invalid(format!("not XML: {e}")),
    })?;
    // Moved out, not cloned: an inventory answer's tree is tens of MB.
    let mut body = root
        .take_first("Body")
        .ok_or_else(|| BadResponse::Invalid(format!("no SOAP Body in <{}>", root.name)))?;
    if body.children.is_empty() {
        return Err(BadResponse::Invalid("empty SOAP Body".to_string()));
    }
    let inner = body.children.swap_remove(0);
    if inner.local_name() == "Fault" {
        return Ok(Outcome::Fault(fault_of(&inner)));
    }
    Ok(Outcome::Body(inner))
}

fn fault_of(fault: &Element) -> Fault {
    let message = fault
        .path_text(&["faultstring"])
        .unwrap_or_default()
        .to_string();
    // vim25 puts the typed fault in <detail>: <NotAuthenticatedFault xsi:type="NotAuthenticated">.
    let kind = fault
        .first("detail")
        .and_then(|d| d.children.first())
        .map(|d| {
            d.type_name()
                .map(str::to_string)
                .unwrap_or_else(|| d.local_name().trim_end_matches("Fault").to_string())
        })
        .unwrap_or_else(|| {
            fault
                .path_text(&["faultcode"])
                .unwrap_or("UnknownFault")
                .to_string()
        });
    Fault { kind, message }
}

/// Turns a LocalizedMethodFault (task `info.error`) into a kind and message.
pub fn localized_fault(error: &Element) -> Fault {
    let kind = error
        .first("fault")
        .and_then(|f| f.type_name().map(str::to_string))
        .unwrap_or_else(|| "UnknownFault".into());
    let message = error
        .path_text(&["localizedMessage"])
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.clone());
    Fault { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fault_is_read_from_detail() {
        let xml = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring>
<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated"><object type="Folder">group-d1</object><privilegeId>System.View</privilegeId></NotAuthenticatedFault></detail>
</soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let Outcome::Fault(f) = parse_response(xml).unwrap() else {
            panic!("expected a fault")
        };
        assert_eq!(f.kind, "NotAuthenticated");
        assert_eq!(f.message, "The session is not authenticated.");
    }

    #[test]
    fn fault_without_xsi_type_uses_the_detail_element_name() {
        let xml = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>x</faultcode><faultstring>Cannot complete login</faultstring><detail><InvalidLoginFault xmlns="urn:vim25"/></detail></s:Fault></s:Body></s:Envelope>"#;
        let Outcome::Fault(f) = parse_response(xml).unwrap() else {
            panic!("expected a fault")
        };
        assert_eq!(f.kind, "InvalidLogin");
    }

    #[test]
    fn body_is_the_single_element_in_soap_body() {
        let xml = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><LoginResponse xmlns="urn:vim25"><returnval><key>52a</key></returnval></LoginResponse></soapenv:Body></soapenv:Envelope>"#;
        let Outcome::Body(b) = parse_response(xml).unwrap() else {
            panic!("expected a body")
        };
        assert_eq!(b.path_text(&["returnval", "key"]), Some("52a"));
        assert!(matches!(
            parse_response(b"<html>502</html>"),
            Err(BadResponse::Invalid(m)) if m == "no SOAP Body in <html>"
        ));
    }

    #[test]
    fn an_over_deep_body_is_refused_as_too_deep() {
        let deep = format!(
            "<s:Envelope xmlns:s=\"{SOAP_ENV}\"><s:Body><R>{}</R></s:Body></s:Envelope>",
            "<a>".repeat(crate::xml::MAX_DEPTH)
        );
        assert_eq!(
            parse_response(deep.as_bytes()).err(),
            Some(BadResponse::TooDeep {
                limit: crate::xml::MAX_DEPTH
            })
        );
    }

    #[test]
    fn envelope_declares_the_namespaces_vim25_types_need() {
        let xml = String::from_utf8(envelope(Element::text("Logout", "")).to_xml()).unwrap();
        assert!(xml.contains(r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#));
        assert!(xml.starts_with("<soapenv:Envelope"));
    }

    #[test]
    fn task_error_becomes_fault_kind_and_message() {
        let info = Element::parse(
            br#"<error xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><fault xsi:type="InvalidDeviceSpec"><deviceIndex>0</deviceIndex></fault><localizedMessage>Invalid configuration for device '0'.</localizedMessage></error>"#,
        )
        .unwrap();
        let f = localized_fault(&info);
        assert_eq!(f.kind, "InvalidDeviceSpec");
        assert_eq!(f.message, "Invalid configuration for device '0'.");
    }

    #[test]
    fn session_cookie_is_taken_from_set_cookie() {
        let h =
            HeaderValue::from_static("vmware_soap_session=\"abc123\"; Path=/; HttpOnly; Secure;");
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        assert_eq!(session_cookie(&HeaderValue::from_static("other=1")), None);
    }
}
