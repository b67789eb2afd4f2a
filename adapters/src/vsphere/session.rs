//! A vim25 session: service content, login, re-login on `NotAuthenticated`, logout.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

use super::soap::{Fault, Outcome, SoapClient};
use crate::xml::{Element, MoRef};
use crate::{ConnectionState, Error, Result, Secret, VSphereConfig};

/// The managed objects every call starts from (`ServiceContent`).
#[derive(Debug, Clone)]
pub struct Services {
    pub property_collector: MoRef,
    pub session_manager: MoRef,
    pub perf_manager: MoRef,
    pub view_manager: MoRef,
    pub root_folder: MoRef,
    pub setting: Option<MoRef>,
}

#[derive(Debug, Default)]
struct Current {
    cookie: Option<String>,
    session_key: Option<String>,
    /// Bumped on every login, so concurrent callers re-login once, not once each.
    generation: u64,
    state: Option<ConnectionState>,
}

pub struct Session {
    soap: SoapClient,
    username: String,
    password: Secret,
    pub services: Services,
    current: Mutex<Current>,
    login_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.soap.url())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn moref_at(content: &Element, name: &str) -> Option<MoRef> {
    content.first(name).and_then(Element::as_moref)
}

impl Session {
    /// Reads the service content and logs in.
    pub async fn open(config: &VSphereConfig, timeout: Duration) -> Result<Self> {
        let soap = SoapClient::new(&config.url, &config.tls, timeout)?;
        let request = Element::new("RetrieveServiceContent").child(Element::moref(
            "_this",
            &MoRef::new("ServiceInstance", "ServiceInstance"),
        ));
        let content = match soap
            .call("reading the service content", request, None)
            .await?
            .0
        {
            Outcome::Body(b) => b,
            Outcome::Fault(f) => return Err(fault_error(&soap, "reading the service content", f)),
        };
        let content = content.first("returnval").cloned().unwrap_or_default();
        let need = |name: &str| {
            moref_at(&content, name).ok_or_else(|| Error::Protocol {
                action: "reading the service content".into(),
                url: config.url.clone(),
                message: format!("no {name} in ServiceContent"),
            })
        };
        let services = Services {
            property_collector: need("propertyCollector")?,
            session_manager: need("sessionManager")?,
            perf_manager: need("perfManager")?,
            view_manager: need("viewManager")?,
            root_folder: need("rootFolder")?,
            setting: moref_at(&content, "setting"),
        };
        let session = Self {
            soap,
            username: config.username.clone(),
            password: config.password.clone(),
            services,
            current: Mutex::new(Current::default()),
            login_lock: tokio::sync::Mutex::new(()),
        };
        session.login(0).await?;
        Ok(session)
    }

    pub fn url(&self) -> &str {
        self.soap.url()
    }

    pub fn state(&self) -> ConnectionState {
        let current = self.current.lock().expect("session state lock");
        current
            .state
            .clone()
            .unwrap_or(ConnectionState::Disconnected {
                since: SystemTime::now(),
                reason: "not logged in".into(),
                retry_at: SystemTime::now(),
            })
    }

    /// The server-side key of the current session (what `TerminateSession` takes).
    pub fn session_key(&self) -> Option<String> {
        self.current
            .lock()
            .expect("session state lock")
            .session_key
            .clone()
    }

    fn set_state(&self, state: ConnectionState) {
        self.current.lock().expect("session state lock").state = Some(state);
    }

    /// Logs in unless another caller already did since `seen_generation`.
    async fn login(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.login_lock.lock().await;
        if self.current.lock().expect("session state lock").generation != seen_generation {
            return Ok(());
        }
        // The password goes into the request body only; nothing here is logged.
        let request = Element::new("Login")
            .child(Element::moref("_this", &self.services.session_manager))
            .child(Element::text("userName", &self.username))
            .child(Element::text("password", self.password.expose()));
        let result = self.soap.call("logging in", request, None).await;
        let (outcome, cookie) = match result {
            Ok(r) => r,
            Err(e) => {
                self.mark_lost(&e.to_string());
                return Err(e);
            }
        };
        match outcome {
            Outcome::Body(body) => {
                let cookie = cookie.ok_or_else(|| Error::Protocol {
                    action: "logging in".into(),
                    url: self.url().to_string(),
                    message: "the server set no session cookie".into(),
                })?;
                let mut current = self.current.lock().expect("session state lock");
                current.cookie = Some(cookie);
                current.session_key = body.path_text(&["returnval", "key"]).map(str::to_string);
                current.generation += 1;
                current.state = Some(ConnectionState::Connected {
                    since: SystemTime::now(),
                });
                tracing::info!(url = %self.url(), user = %self.username, "logged in to vSphere");
                Ok(())
            }
            Outcome::Fault(f) => {
                let err = Error::Authentication {
                    url: self.url().to_string(),
                    username: self.username.clone(),
                    fault: f.kind,
                    message: f.message,
                };
                self.mark_lost(&err.to_string());
                Err(err)
            }
        }
    }

    fn mark_lost(&self, reason: &str) {
        let now = SystemTime::now();
        self.set_state(ConnectionState::Disconnected {
            since: now,
            reason: reason.to_string(),
            retry_at: now,
        });
    }

    /// Calls a vim25 method with the session, logging in again once if the server no
    /// longer knows the session (expired, terminated, server restarted).
    pub async fn invoke(&self, action: &str, request: Element) -> Result<Element> {
        self.call(action, request, true).await
    }

    /// Calls a method that changes something (starts a task). When the server no longer
    /// knows the session this logs in again for the next call, but does not send the
    /// request again: it returns the `NotAuthenticated` fault, and the caller re-reads what
    /// it wants to change before deciding to send anything.
    pub async fn invoke_once(&self, action: &str, request: Element) -> Result<Element> {
        self.call(action, request, false).await
    }

    async fn call(&self, action: &str, request: Element, resend: bool) -> Result<Element> {
        for attempt in 0..2 {
            let (cookie, generation) = {
                let c = self.current.lock().expect("session state lock");
                (c.cookie.clone(), c.generation)
            };
            if cookie.is_none() {
                self.login(generation).await?;
                continue;
            }
            let outcome = match self
                .soap
                .call(action, request.clone(), cookie.as_deref())
                .await
            {
                Ok((outcome, _)) => outcome,
                Err(e) => {
                    if e.is_disconnected() {
                        self.mark_lost(&e.to_string());
                    }
                    return Err(e);
                }
            };
            match outcome {
                Outcome::Body(body) => {
                    if !self.state().is_connected() {
                        self.set_state(ConnectionState::Connected {
                            since: SystemTime::now(),
                        });
                    }
                    return Ok(body);
                }
                Outcome::Fault(f) if f.kind == "NotAuthenticated" && attempt == 0 => {
                    tracing::info!(url = %self.url(), %action, "vSphere session is gone; logging in again");
                    self.login(generation).await?;
                    if !resend {
                        return Err(fault_error(&self.soap, action, f));
                    }
                }
                Outcome::Fault(f) => return Err(fault_error(&self.soap, action, f)),
            }
        }
        Err(Error::Protocol {
            action: action.to_string(),
            url: self.url().to_string(),
            message: "still not authenticated after logging in again".into(),
        })
    }

    /// Keeps the session from idling out, and proves it still exists.
    pub async fn keepalive(&self) -> Result<()> {
        let request = Element::new("RetrievePropertiesEx")
            .child(Element::moref("_this", &self.services.property_collector))
            .child(
                Element::new("specSet")
                    .child(
                        Element::new("propSet")
                            .child(Element::text("type", "SessionManager"))
                            .child(Element::text("pathSet", "currentSession")),
                    )
                    .child(
                        Element::new("objectSet")
                            .child(Element::moref("obj", &self.services.session_manager)),
                    ),
            )
            .child(Element::new("options"));
        let body = self.invoke("keeping the session alive", request).await?;
        let active = body
            .path(&["returnval", "objects", "propSet", "val"])
            .is_some();
        if !active {
            // A session manager that shows no current session means ours is gone.
            let generation = self.current.lock().expect("session state lock").generation;
            self.login(generation).await?;
        }
        Ok(())
    }

    pub async fn logout(&self) -> Result<()> {
        let cookie = self
            .current
            .lock()
            .expect("session state lock")
            .cookie
            .take();
        let Some(cookie) = cookie else { return Ok(()) };
        let request =
            Element::new("Logout").child(Element::moref("_this", &self.services.session_manager));
        let (outcome, _) = self
            .soap
            .call("logging out", request, Some(&cookie))
            .await?;
        self.mark_lost("logged out");
        match outcome {
            Outcome::Body(_) => Ok(()),
            Outcome::Fault(f) if f.kind == "NotAuthenticated" => Ok(()),
            Outcome::Fault(f) => Err(fault_error(&self.soap, "logging out", f)),
        }
    }
}

fn fault_error(soap: &SoapClient, action: &str, f: Fault) -> Error {
    Error::SoapFault {
        action: action.to_string(),
        url: soap.url().to_string(),
        fault: f.kind,
        message: f.message,
    }
}
