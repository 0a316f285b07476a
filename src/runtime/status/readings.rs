//! One reading of the metrics registry: every family gathered once, then
//! looked up by name and labels. The sampler reads what the proxy already
//! counts, so the status page adds nothing to a request's path.
//!
//! Invariant: a series that does not exist reads as `None`, never as zero
//! made up here; callers decide what an absent series means.

use std::collections::HashMap;

use prometheus::proto::{Metric, MetricFamily};

use super::quantile::Buckets;

/// The registry's families at one instant, by name.
pub(super) struct Readings {
    families: HashMap<String, MetricFamily>,
}

impl Readings {
    pub(super) fn new(gathered: Vec<MetricFamily>) -> Readings {
        Readings {
            families: gathered
                .into_iter()
                .map(|f| (f.name().to_string(), f))
                .collect(),
        }
    }

    /// The series of `family` whose labels include every `labels` pair.
    fn series(&self, family: &str, labels: &[(&str, &str)]) -> Option<&Metric> {
        self.families.get(family)?.get_metric().iter().find(|m| {
            labels.iter().all(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *name && l.value() == *value)
            })
        })
    }

    /// The values of label `name` over the series of `family` whose labels
    /// include every `labels` pair (e.g. the targets of an upstream).
    pub(super) fn label_values(
        &self,
        family: &str,
        labels: &[(&str, &str)],
        name: &str,
    ) -> Vec<String> {
        let Some(family) = self.families.get(family) else {
            return Vec::new();
        };
        family
            .get_metric()
            .iter()
            .filter(|m| {
                labels.iter().all(|(n, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *n && l.value() == *v)
                })
            })
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            })
            .collect()
    }

    /// A counter's value, as the integer it counts.
    pub(super) fn counter(&self, family: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let value = self.series(family, labels)?.get_counter().get_value();
        // Counters count whole events; the cast saturates.
        Some(value as u64)
    }

    pub(super) fn gauge(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        Some(self.series(family, labels)?.get_gauge().get_value())
    }

    pub(super) fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Option<Buckets> {
        let histogram = self.series(family, labels)?.get_histogram();
        Some(Buckets {
            cumulative: histogram
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
            count: histogram.get_sample_count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    use super::*;

    #[test]
    fn finds_series_by_name_and_labels() {
        let registry = Registry::new();
        let counter = IntCounterVec::new(Opts::new("c_total", "c"), &["route", "outcome"]).unwrap();
        let histogram = HistogramVec::new(
            HistogramOpts::new("h", "h").buckets(vec![0.1, 1.0]),
            &["up"],
        )
        .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        registry.register(Box::new(histogram.clone())).unwrap();
        counter.with_label_values(&["a", "forwarded"]).inc_by(7);
        counter.with_label_values(&["b", "forwarded"]).inc_by(2);
        histogram.with_label_values(&["x"]).observe(0.5);

        let readings = Readings::new(registry.gather());
        let forwarded =
            |route| readings.counter("c_total", &[("route", route), ("outcome", "forwarded")]);
        assert_eq!(
            (forwarded("a"), forwarded("b"), forwarded("c")),
            (Some(7), Some(2), None)
        );
        assert_eq!(readings.gauge("nope", &[]), None);
        let buckets = readings.histogram("h", &[("up", "x")]).unwrap();
        assert_eq!(buckets.cumulative, [(0.1, 0), (1.0, 1)]);
        assert_eq!(buckets.count, 1);
    }
}
