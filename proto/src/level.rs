//! Flink's back-pressure levels and the thresholds its REST handler has used since 1.5:
//! OK for a ratio ≤ 0.10, LOW for ≤ 0.5, HIGH above.

use serde::{Deserialize, Serialize};

/// Back-pressure level of a subtask (or of a vertex: its worst subtask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Low,
    High,
}

impl Level {
    /// Upper bound (inclusive) of the OK band.
    pub const OK_MAX: f64 = 0.10;
    /// Upper bound (inclusive) of the LOW band.
    pub const LOW_MAX: f64 = 0.5;

    /// The level of a back-pressure ratio, as `JobVertexBackPressureHandler` computes it.
    /// A NaN ratio (no samples) has no level.
    pub fn from_ratio(ratio: f64) -> Option<Level> {
        if ratio.is_nan() {
            None
        } else if ratio <= Self::OK_MAX {
            Some(Level::Ok)
        } else if ratio <= Self::LOW_MAX {
            Some(Level::Low)
        } else {
            Some(Level::High)
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Low => "low",
            Level::High => "high",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Low => "LOW",
            Level::High => "HIGH",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_inclusive_like_flink() {
        assert_eq!(Level::from_ratio(0.0), Some(Level::Ok));
        assert_eq!(Level::from_ratio(0.10), Some(Level::Ok));
        assert_eq!(Level::from_ratio(0.1000001), Some(Level::Low));
        assert_eq!(Level::from_ratio(0.5), Some(Level::Low));
        assert_eq!(Level::from_ratio(0.51), Some(Level::High));
        assert_eq!(Level::from_ratio(1.0), Some(Level::High));
        assert_eq!(Level::from_ratio(f64::NAN), None);
    }

    #[test]
    fn worst_level_is_the_maximum() {
        let worst = [Level::Low, Level::High, Level::Ok].into_iter().max();
        assert_eq!(worst, Some(Level::High));
    }

    #[test]
    fn serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Level::High).unwrap(), "\"high\"");
        let l: Level = serde_json::from_str("\"low\"").unwrap();
        assert_eq!(l, Level::Low);
    }
}
