//! An intent's status body as a pass decides it. The backing map stays one entry per VM and a
//! reference per pod until a write is due: at 10,000 pods, building and dropping a thousand
//! JSON objects per intent every pass, to write one every 30 s, was a fifth of the pass
//! (docs/scale.md).

use serde_json::{Map, Value};
use std::hash::{Hash, Hasher};

use super::fingerprint::{Fingerprint, Hashers, BACKING_FIGURES};

/// A status body: the backing map, and the rest as JSON.
pub struct StatusBody<'a> {
    /// Everything but `backing`: a JSON object.
    pub rest: Value,
    pub backing: Option<Backing<'a>>,
}

impl Default for StatusBody<'_> {
    fn default() -> Self {
        Self {
            rest: Value::Object(Map::new()),
            backing: None,
        }
    }
}

/// `status.backing`: what the pods on each VM share, and each pod with its node.
#[derive(Default)]
pub struct Backing<'a> {
    /// An entry per VM (or none), without the pod and its node.
    pub shares: Vec<Map<String, Value>>,
    /// Each pod, its node, and its share, in order.
    pub pods: Vec<(&'a str, Option<&'a str>, usize)>,
}

impl StatusBody<'_> {
    /// The body's fingerprint: `rest` walked as any body ([`Hashers::walk`]), then the
    /// backing map, each VM's share hashed once.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Hashers::default();
        h.walk(&self.rest);
        if let Some(backing) = &self.backing {
            "backing".hash(&mut h.shape);
            backing.pods.len().hash(&mut h.shape);
            let shares: Vec<(u64, u64)> = backing.shares.iter().map(share_hashes).collect();
            for (i, (pod, node, share)) in backing.pods.iter().enumerate() {
                let (shape, figures) = shares[*share];
                (pod, node, shape).hash(&mut h.shape);
                (i, figures).hash(&mut h.figures);
            }
        }
        h.finish()
    }

    /// The body as JSON.
    pub fn into_value(self) -> Value {
        let Self { mut rest, backing } = self;
        if let (Some(backing), Value::Object(o)) = (backing, &mut rest) {
            let entries = backing
                .pods
                .iter()
                .map(|(pod, node, share)| {
                    let mut entry = backing.shares[*share].clone();
                    entry.insert("pod".into(), (*pod).into());
                    if let Some(node) = node {
                        entry.insert("node".into(), (*node).into());
                    }
                    Value::Object(entry)
                })
                .collect();
            o.insert("backing".into(), Value::Array(entries));
        }
        rest
    }
}

/// A share's hashes: without its figures, and of its figures alone.
fn share_hashes(share: &Map<String, Value>) -> (u64, u64) {
    let mut h = Hashers::default();
    for entry in share {
        if BACKING_FIGURES.contains(&entry.0.as_str()) {
            entry.hash(&mut h.figures);
        } else {
            entry.hash(&mut h.shape);
        }
    }
    (h.shape.finish(), h.figures.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn share(vm: &str, verdict: &str, latency: &str) -> Map<String, Value> {
        let v = json!({"vm": vm, "verdict": verdict, "latency": latency, "sampledAt": latency});
        v.as_object().unwrap().clone()
    }

    fn body<'a>(shares: Vec<Map<String, Value>>, pods: &[(&'a str, usize)]) -> StatusBody<'a> {
        StatusBody {
            rest: json!({"guard": {"heldReady": []}}),
            backing: Some(Backing {
                shares,
                pods: pods.iter().map(|(p, s)| (*p, Some("n1"), *s)).collect(),
            }),
        }
    }

    #[test]
    fn the_backing_map_changes_the_shape_but_for_its_figures() {
        let pods = [("a", 0), ("b", 1)];
        let a = body(
            vec![
                share("vm-a", "healthy", "1ms"),
                share("vm-b", "healthy", "2ms"),
            ],
            &pods,
        );
        let later = body(
            vec![
                share("vm-a", "healthy", "1ms"),
                share("vm-b", "healthy", "40ms"),
            ],
            &pods,
        );
        let (fa, fl) = (a.fingerprint(), later.fingerprint());
        assert!(fa.same_shape(&fl));
        assert_ne!(fa, fl);
        for other in [
            body(
                vec![
                    share("vm-a", "healthy", "1ms"),
                    share("vm-c", "healthy", "2ms"),
                ],
                &pods,
            ),
            body(
                vec![
                    share("vm-a", "healthy", "1ms"),
                    share("vm-b", "degraded", "2ms"),
                ],
                &pods,
            ),
            body(
                vec![
                    share("vm-a", "healthy", "1ms"),
                    share("vm-b", "healthy", "2ms"),
                ],
                &[("a", 0), ("c", 1)],
            ),
            body(
                vec![
                    share("vm-a", "healthy", "1ms"),
                    share("vm-b", "healthy", "2ms"),
                ],
                &[("a", 0), ("b", 0)],
            ),
        ] {
            assert!(!fa.same_shape(&other.fingerprint()));
        }
        // The same figure on another pod is another whole.
        let swapped = body(
            vec![
                share("vm-a", "healthy", "2ms"),
                share("vm-b", "healthy", "1ms"),
            ],
            &pods,
        );
        assert_ne!(fa, swapped.fingerprint());
    }

    #[test]
    fn the_body_as_json_has_an_entry_per_pod() {
        let b = body(vec![share("vm-a", "healthy", "1ms")], &[("a", 0), ("b", 0)]);
        let v = b.into_value();
        assert_eq!(v["guard"], json!({"heldReady": []}));
        assert_eq!(v["backing"][1]["pod"], "b");
        assert_eq!(v["backing"][1]["node"], "n1");
        assert_eq!(v["backing"][1]["vm"], "vm-a");
        assert_eq!(v["backing"][1]["latency"], "1ms");
    }
}
