//! The run profile (`SLUICE_CHAOS_PROFILE=quick|full`, default quick): how large each scenario
//! is. Quick fits the normal test suite; full is what `cargo xtask chaos --full` runs.

/// Which profile a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// A few minutes in total on a 2-core machine, in the normal suite.
    Quick,
    /// Larger counts and more faults; run by hand.
    Full,
}

impl Profile {
    /// From `SLUICE_CHAOS_PROFILE`; anything but `full` is quick.
    pub fn from_env() -> Self {
        match std::env::var("SLUICE_CHAOS_PROFILE").as_deref() {
            Ok("full") => Self::Full,
            _ => Self::Quick,
        }
    }

    /// Its name, as the scorecard prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }

    /// `quick` or `full` depending on the profile.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Self::Quick => quick,
            Self::Full => full,
        }
    }
}
