#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("node {node} has podCIDR {cidr}, which is not an IPv4 /24")]
    PodCidr { node: String, cidr: String },
    #[error("node {node} has no free pod IP in {cidr}")]
    PodIpsExhausted { node: String, cidr: String },
    #[error("node {node} was replaced by another object of the same name")]
    NodeReplaced { node: String },
    #[error("the pod watch ended")]
    WatchEnded,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kube(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.into();
        move |source| Error::Kube {
            action,
            object,
            source,
        }
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}
