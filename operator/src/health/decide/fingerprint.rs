//! What the pass remembers of an intent's status body as last written: a [`Fingerprint`],
//! two hashes, not the body. At 10,000 pods every body lists every backing pod, and keeping
//! them was megabytes of the operator's live heap (docs/scale.md).

use serde_json::Value;
use std::hash::{BuildHasher, Hash, Hasher};

/// The figures of a backing map's entries (`super::body`).
pub(super) const BACKING_FIGURES: &[&str] = &["latency", "sampledAt"];

/// Per list of the rest of a status body: the figures its entries carry (a relocation
/// target's reason quotes an I/O rate).
const FIGURES: [(&str, &[&str]); 2] = [
    ("/neighbourCandidates", &["iops"]),
    ("/placement/relocationTargets", &["reason"]),
];

/// `shape` leaves out the figures: a changed shape is written now; figures refresh slowly, so
/// status churn does not wake the intent controller every second. `whole` hashes everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    shape: u64,
    whole: u64,
}

impl Fingerprint {
    /// Equal but for the figures.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.shape == other.shape
    }
}

/// foldhash with a fixed seed: fast, and the same in every pass (fingerprints, `SeriesSeen`).
pub(super) const HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x706c_756d_626c);

/// What a fingerprint is made of: the shape, and the figures in place.
pub(super) struct Hashers {
    pub shape: foldhash::fast::FoldHasher<'static>,
    pub figures: foldhash::fast::FoldHasher<'static>,
}

impl Default for Hashers {
    fn default() -> Self {
        Self {
            shape: HASH.build_hasher(),
            figures: HASH.build_hasher(),
        }
    }
}

impl Hashers {
    pub fn walk(&mut self, body: &Value) {
        walk(body, &mut String::new(), self);
    }

    /// `whole` covers the shape and the figures.
    pub fn finish(mut self) -> Fingerprint {
        let shape = self.shape.finish();
        self.figures.write_u64(shape);
        Fingerprint {
            shape,
            whole: self.figures.finish(),
        }
    }
}

/// Feeds a body (at `path`, as `/key/key`) to the hashers: the lists at a [`FIGURES`] path
/// have their object entries' figures fed to `figures` with the entry's index, the rest of
/// each entry to `shape`; the objects on the way there are walked key by key; anything else
/// is fed whole to `shape`.
fn walk(v: &Value, path: &mut String, h: &mut Hashers) {
    let figures = FIGURES
        .iter()
        .find(|(list, _)| *list == path.as_str())
        .map(|(_, keys)| *keys);
    match (v, figures) {
        (Value::Array(items), Some(keys)) => {
            items.len().hash(&mut h.shape);
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Object(o) => {
                        let figure = |(k, _): &(&String, &Value)| keys.contains(&k.as_str());
                        let rest = o.iter().filter(|e| !figure(e));
                        rest.clone().count().hash(&mut h.shape);
                        rest.for_each(|entry| entry.hash(&mut h.shape));
                        (path.as_str(), i).hash(&mut h.figures);
                        o.iter()
                            .filter(figure)
                            .for_each(|entry| entry.hash(&mut h.figures));
                    }
                    _ => item.hash(&mut h.shape),
                }
            }
        }
        (Value::Object(o), None) => {
            o.len().hash(&mut h.shape);
            for (k, x) in o {
                k.hash(&mut h.shape);
                let len = path.len();
                path.push('/');
                path.push_str(k);
                walk(x, path, h);
                path.truncate(len);
            }
        }
        _ => v.hash(&mut h.shape),
    }
}

#[cfg(test)]
mod tests {
    use super::{Fingerprint, Hashers};
    use serde_json::{json, Value};

    fn of(body: &Value) -> Fingerprint {
        let mut h = Hashers::default();
        h.walk(body);
        h.finish()
    }

    #[test]
    fn figures_do_not_change_the_shape_and_everything_else_does() {
        let body = |iops: i64, held: i64, reason: &str| {
            json!({
                "neighbourCandidates": [{"vm": "vm-b", "iops": iops}],
                "guard": {"heldReady": held},
                "placement": {"hosts": 2, "relocationTargets": [{"host": "h", "reason": reason}]},
            })
        };
        let a = of(&body(3, 0, "0 IOPS"));
        assert_eq!(a, of(&body(3, 0, "0 IOPS")));
        let figures = of(&body(9, 0, "12 IOPS"));
        assert_eq!(a.shape, figures.shape);
        assert_ne!(a.whole, figures.whole);
        let guard = of(&body(3, 1, "0 IOPS"));
        assert_ne!(a.shape, guard.shape);
        assert_ne!(a.whole, guard.whole);
        let changed = |change: &dyn Fn(&mut Value)| {
            let mut b = body(3, 0, "0 IOPS");
            change(&mut b);
            of(&b)
        };
        let more = changed(&|b| {
            b["neighbourCandidates"]
                .as_array_mut()
                .unwrap()
                .push(json!({"vm": "vm-c"}))
        });
        assert_ne!(a.shape, more.shape);
        let host = changed(&|b| b["placement"]["relocationTargets"][0]["host"] = json!("g"));
        assert_ne!(a.shape, host.shape);
        // Figure keys are figures only in their lists.
        let hosts = changed(&|b| b["placement"]["iops"] = json!(1));
        assert_ne!(a.shape, hosts.shape);
    }
}
