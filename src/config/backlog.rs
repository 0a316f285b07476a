//! The listen backlog asked for (`server.backlog`) and the kernel's cap on
//! it (`net.core.somaxconn`): the runtime logs it, `sluice check` shows it.

/// Where Linux keeps the cap on every listen backlog.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// The listen backlog asked for and the kernel's cap on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// `server.backlog`.
    pub asked: u32,
    /// `net.core.somaxconn`, when it can be read.
    pub somaxconn: Option<u32>,
}

impl Backlog {
    /// Reads the kernel's cap for a backlog of `asked`.
    pub fn probe(asked: u32) -> Backlog {
        let somaxconn = std::fs::read_to_string(SOMAXCONN_PATH)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        Backlog { asked, somaxconn }
    }

    /// The backlog the listeners really get.
    pub fn in_force(self) -> u32 {
        self.somaxconn.map_or(self.asked, |cap| self.asked.min(cap))
    }

    /// Whether the kernel gives less than was asked.
    pub fn capped(self) -> bool {
        self.in_force() < self.asked
    }

    /// Logs the backlog in force, with a warning when the kernel caps it.
    pub fn log(self) {
        if self.capped() {
            tracing::warn!(
                asked = self.asked,
                in_force = self.in_force(),
                "server.backlog is capped by net.core.somaxconn; raise it (sysctl -w net.core.somaxconn={}) for a deeper accept queue",
                self.asked
            );
        } else {
            tracing::info!(backlog = self.in_force(), "listen backlog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_in_force_is_capped_by_somaxconn() {
        let capped = Backlog {
            asked: 65_535,
            somaxconn: Some(4096),
        };
        assert_eq!(capped.in_force(), 4096);
        assert!(capped.capped());
        let unknown = Backlog {
            asked: 100,
            somaxconn: None,
        };
        assert_eq!(unknown.in_force(), 100);
        assert!(!unknown.capped());
    }
}
