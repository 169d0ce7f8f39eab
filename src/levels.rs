//! [`Levels`]: how many exclusive and how many shared levels of one key.

use crate::LockMode;

/// A count of levels per mode, as PostgreSQL stacks them on a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Levels {
    pub(crate) exclusive: u32,
    pub(crate) shared: u32,
}

impl Levels {
    pub(crate) fn of(self, mode: LockMode) -> u32 {
        match mode {
            LockMode::Exclusive => self.exclusive,
            LockMode::Shared => self.shared,
        }
    }

    pub(crate) fn of_mut(&mut self, mode: LockMode) -> &mut u32 {
        match mode {
            LockMode::Exclusive => &mut self.exclusive,
            LockMode::Shared => &mut self.shared,
        }
    }

    pub(crate) fn any(self) -> bool {
        self.exclusive > 0 || self.shared > 0
    }

    /// These levels and one more of `mode`.
    pub(crate) fn with(mut self, mode: LockMode) -> Levels {
        *self.of_mut(mode) += 1;
        self
    }

    pub(crate) fn plus(self, other: Levels) -> Levels {
        Levels {
            exclusive: self.exclusive.saturating_add(other.exclusive),
            shared: self.shared.saturating_add(other.shared),
        }
    }

    pub(crate) fn minus(self, other: Levels) -> Levels {
        Levels {
            exclusive: self.exclusive.saturating_sub(other.exclusive),
            shared: self.shared.saturating_sub(other.shared),
        }
    }
}
