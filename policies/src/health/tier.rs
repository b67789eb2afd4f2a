//! Business tiers, ordered so that `a >= b` reads "a is protected at least as much as b".

/// The priority an intent gives its workload. The order matters: a VM backing a workload of
/// tier `t` is protected from throttling on behalf of any victim of tier `<= t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    BestEffort,
    Standard,
    High,
    Critical,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::BestEffort, Tier::Standard, Tier::High, Tier::Critical];

    /// The name users write in the intent (`critical`, `best-effort`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::BestEffort => "best-effort",
            Tier::Standard => "standard",
            Tier::High => "high",
            Tier::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
