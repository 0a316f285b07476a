//! The one outcome every request ends with, as in DESIGN.md.

/// How a request ended. Each request gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Sent to a backend; its response (or the client's departure once the
    /// backend had it: 499 in the access log) ended it.
    Forwarded = 0,
    /// No room in the queue, or the expected wait exceeded the timeout: 503.
    RejectedQueueFull = 1,
    /// A per-key limit refused it: 429.
    RejectedRateLimited = 2,
    /// Waited in the queue until its deadline, or was still queued at shutdown: 503.
    DroppedTimeout = 3,
    /// The client left (disconnected, reset its HTTP/2 stream, broke off its
    /// body) before the request reached a backend connection; nothing was
    /// sent anywhere.
    Cancelled = 4,
    /// Connect failure, timeout or reset at the backend: 502 or 504. Never a
    /// failure the client caused.
    UpstreamError = 5,
    /// Nothing matched: 404.
    NoRoute = 6,
    /// Refused for what it is: a CONNECT (405), a bad Host (400), a body over
    /// `max_body_bytes` (413), malformed (400) or not sent in time (408).
    RejectedInvalid = 7,
    /// On an async route: made durable and answered 202 with a ticket; its
    /// delivery is counted in `sluice_async_requests_total`.
    Accepted = 8,
    /// A ticket's status asked for and answered by sluice (200, or 404 for
    /// an unknown ticket).
    TicketStatus = 9,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::RejectedQueueFull,
        Outcome::RejectedRateLimited,
        Outcome::DroppedTimeout,
        Outcome::Cancelled,
        Outcome::UpstreamError,
        Outcome::NoRoute,
        Outcome::RejectedInvalid,
        Outcome::Accepted,
        Outcome::TicketStatus,
    ];

    /// The `outcome` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::RejectedQueueFull => "rejected_queue_full",
            Outcome::RejectedRateLimited => "rejected_rate_limited",
            Outcome::DroppedTimeout => "dropped_timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::UpstreamError => "upstream_error",
            Outcome::NoRoute => "no_route",
            Outcome::RejectedInvalid => "rejected_invalid",
            Outcome::Accepted => "accepted",
            Outcome::TicketStatus => "ticket_status",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_index_all() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }
}
