//! The backend model: how long each request takes (fixed or exponential,
//! from a seeded generator) and how many it serves at once.

use std::num::NonZeroUsize;
use std::time::Duration;

/// How long the backend takes to answer one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    /// Every request takes exactly this long.
    Fixed(Duration),
    /// Exponentially distributed with this mean (seeded, repeatable).
    Exponential(Duration),
}

impl std::str::FromStr for ServiceTime {
    type Err = String;

    /// A duration as humantime reads it (`10ms`, `1s 500ms`), or `exp:MEAN`
    /// (`exp:10ms`) for a sampled exponential.
    fn from_str(text: &str) -> Result<ServiceTime, String> {
        let (exp, duration) = match text.strip_prefix("exp:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|err| format!("`{text}`: {err} (expected e.g. `10ms` or `exp:10ms`)"))?;
        Ok(if exp {
            ServiceTime::Exponential(duration)
        } else {
            ServiceTime::Fixed(duration)
        })
    }
}

impl std::fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceTime::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            ServiceTime::Exponential(d) => write!(f, "exp:{}", humantime::format_duration(*d)),
        }
    }
}

/// The backend behind every upstream (each upstream gets its own instance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendModel {
    pub service_time: ServiceTime,
    /// Requests the backend serves at once; more wait at the backend, in
    /// order, still holding sluice's in-flight slot. `None`: no limit.
    pub concurrency: Option<NonZeroUsize>,
    /// Seed of the service-time sampler.
    pub seed: u64,
}

impl BackendModel {
    /// A backend answering every request after `service_time`, with no concurrency limit.
    pub fn fixed(service_time: Duration) -> BackendModel {
        BackendModel {
            service_time: ServiceTime::Fixed(service_time),
            concurrency: None,
            seed: 1,
        }
    }
}

/// SplitMix64: small, fast and seeded; enough for service-time samples (and
/// for generating benchmark traces).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Exponentially distributed with the given mean (e.g. the gap between
    /// arrivals of a Poisson process: mean = 1 / rate).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(super) fn service(&mut self, model: ServiceTime) -> u64 {
        match model {
            ServiceTime::Fixed(d) => d.as_nanos() as u64,
            ServiceTime::Exponential(mean) => {
                let sample = self.exponential(mean.as_nanos() as f64);
                sample.round() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_parses() {
        assert_eq!(
            "10ms".parse::<ServiceTime>(),
            Ok(ServiceTime::Fixed(Duration::from_millis(10)))
        );
        assert_eq!(
            "exp:250us".parse::<ServiceTime>(),
            Ok(ServiceTime::Exponential(Duration::from_micros(250)))
        );
        assert!("fast".parse::<ServiceTime>().is_err());
        assert_eq!(
            ServiceTime::Exponential(Duration::from_millis(10)).to_string(),
            "exp:10ms"
        );
    }

    #[test]
    fn exponential_samples_have_the_mean() {
        let mut rng = Rng(7);
        let n = 200_000;
        let mean = Duration::from_millis(10);
        let sum: u64 = (0..n)
            .map(|_| rng.service(ServiceTime::Exponential(mean)))
            .sum();
        let got = sum as f64 / n as f64 / 1e6;
        assert!((got - 10.0).abs() < 0.1, "mean {got} ms");
    }
}
