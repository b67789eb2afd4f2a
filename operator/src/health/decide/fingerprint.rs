//! What the pass remembers of an intent's status body as last written: a [`Fingerprint`],
//! two hashes, not the body. At 10,000 pods every body lists every backing pod, and keeping
//! them was megabytes of the operator's live heap (docs/scale.md).

use serde_json::Value;
use std::hash::{BuildHasher, Hash, Hasher};

/// Per list of a status body: the figures its entries carry (a relocation target's reason
/// quotes an I/O rate).
const FIGURES: [(&str, &[&str]); 3] = [
    ("/backing", &["latency", "sampledAt"]),
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

    /// A body's fingerprint, in one walk that hashes each value once: two bodies have the
    /// same `shape` when they are equal but for the figures ([`FIGURES`]) in the entries of
    /// their lists; the same `whole` when their shapes and their figures, in place, are
    /// equal, that is when they are equal.
    pub fn of(body: &Value) -> Self {
        let mut h = Hashers {
            shape: HASH.build_hasher(),
            figures: HASH.build_hasher(),
        };
        walk(body, &mut String::new(), &mut h);
        let shape = h.shape.finish();
        h.figures.write_u64(shape);
        Fingerprint {
            shape,
            whole: h.figures.finish(),
        }
    }
}

/// foldhash with a fixed seed: fast, and the same in every pass.
const HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x706c_756d_626c);

struct Hashers {
    shape: foldhash::fast::FoldHasher<'static>,
    figures: foldhash::fast::FoldHasher<'static>,
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
    use super::Fingerprint;
    use serde_json::json;

    #[test]
    fn figures_do_not_change_the_shape_and_everything_else_does() {
        let body = |latency: &str, verdict: &str, reason: &str| {
            json!({
                "backing": [{"pod": "a", "verdict": verdict, "latency": latency, "sampledAt": latency}],
                "guard": {"heldReady": 0},
                "placement": {"hosts": 2, "relocationTargets": [{"host": "h", "reason": reason}]},
            })
        };
        let a = Fingerprint::of(&body("3ms", "healthy", "0 IOPS"));
        assert_eq!(a, Fingerprint::of(&body("3ms", "healthy", "0 IOPS")));
        let figures = Fingerprint::of(&body("9ms", "healthy", "12 IOPS"));
        assert_eq!(a.shape, figures.shape);
        assert_ne!(a.whole, figures.whole);
        let verdict = Fingerprint::of(&body("3ms", "degraded", "0 IOPS"));
        assert_ne!(a.shape, verdict.shape);
        assert_ne!(a.whole, verdict.whole);
        let changed = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut b = body("3ms", "healthy", "0 IOPS");
            change(&mut b);
            Fingerprint::of(&b)
        };
        let more = changed(&|b| {
            b["backing"]
                .as_array_mut()
                .unwrap()
                .push(json!({"pod": "b"}))
        });
        assert_ne!(a.shape, more.shape);
        let guard = changed(&|b| b["guard"]["heldReady"] = json!(1));
        assert_ne!(a.shape, guard.shape);
        let host = changed(&|b| b["placement"]["relocationTargets"][0]["host"] = json!("g"));
        assert_ne!(a.shape, host.shape);
        // Figure keys are figures only in their lists.
        let hosts = changed(&|b| b["placement"]["latency"] = json!("1ms"));
        assert_ne!(a.shape, hosts.shape);
    }

    #[test]
    fn a_backing_entry_changes_the_shape_but_for_its_latency() {
        let body = |vm: &str, ready: bool, latency: &str, at: &str| {
            json!({
                "backing": [
                    {"pod": "a", "vm": "vm-a", "ready": true, "latency": "1ms", "sampledAt": "t0"},
                    {"pod": "b", "vm": vm, "ready": ready, "latency": latency, "sampledAt": at},
                ],
                "guard": {"heldReady": []},
            })
        };
        let a = Fingerprint::of(&body("vm-b", true, "2ms", "t0"));
        let later = Fingerprint::of(&body("vm-b", true, "40ms", "t1"));
        assert_eq!(a.shape, later.shape);
        assert_ne!(a.whole, later.whole);
        for other in [
            body("vm-c", true, "2ms", "t0"),
            body("vm-b", false, "2ms", "t0"),
        ] {
            let other = Fingerprint::of(&other);
            assert_ne!(a.shape, other.shape);
            assert_ne!(a.whole, other.whole);
        }
        // A figure gone is a figure changed, not a shape changed.
        let mut unsampled = body("vm-b", true, "2ms", "t0");
        let entry = unsampled["backing"][1].as_object_mut().unwrap();
        entry.remove("latency");
        entry.remove("sampledAt");
        assert_eq!(a.shape, Fingerprint::of(&unsampled).shape);
    }
}
