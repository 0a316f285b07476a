//! A route's `queue`: capacity, timeout, discipline, fairness and the
//! priority classes.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::config::bounds::MAX_QUEUE_CAPACITY;
use crate::config::defaults::{
    DEFAULT_CLASS, DEFAULT_QUEUE_CAPACITY, DEFAULT_QUEUE_TIMEOUT, MAX_CLASSES,
};
use crate::config::load::{Checked, Ctx};
use crate::config::locate::line_column;
use crate::config::model::{ClassConfig, ClassMatch, Discipline, Fairness, QueueConfig};
use crate::config::raw::{RawClass, RawQueue};
use crate::config::values::{human, parse_header_name};

impl Ctx<'_> {
    pub(crate) fn queue(&self, raw: &RawQueue) -> Checked<QueueConfig> {
        let capacity = raw
            .capacity
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_CAPACITY), |v| {
                self.between(v, 0, MAX_QUEUE_CAPACITY)
            })?;
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_TIMEOUT), |v| self.positive_duration(v))?;
        // The defaults of the other keys live in `QueueConfig::new`.
        let mut queue = QueueConfig::new(capacity, timeout);
        queue.discipline = self.discipline(raw, timeout)?;
        if let Some(v) = &raw.fairness {
            queue.fairness = self.fairness(v)?;
        }
        if let Some(v) = &raw.aging {
            queue.aging = self.positive_duration(v)?;
        }
        Ok(queue)
    }

    /// `discipline` and the `lifo_threshold` that only goes with "adaptive_lifo".
    pub(crate) fn discipline(&self, raw: &RawQueue, timeout: Duration) -> Checked<Discipline> {
        let adaptive = match &raw.discipline {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "fifo" => false,
                "adaptive_lifo" => true,
                other => {
                    return Err(self.invalid(
                        v.span(),
                        format!(
                            "unknown queue discipline {other:?}: expected \"fifo\" or \"adaptive_lifo\""
                        ),
                    ));
                }
            },
        };
        let threshold = match (&raw.lifo_threshold, adaptive) {
            (None, false) => return Ok(Discipline::Fifo),
            (Some(v), false) => {
                return Err(self.invalid(
                    v.span(),
                    "only allowed with discipline = \"adaptive_lifo\" (the default discipline is \"fifo\")",
                ));
            }
            (Some(v), true) => {
                let threshold = self.positive_duration(v)?;
                if threshold >= timeout {
                    return Err(self.invalid(
                        v.span(),
                        format!(
                            "must be less than the queue timeout ({}), got {}",
                            human(timeout),
                            human(threshold)
                        ),
                    ));
                }
                threshold
            }
            (None, true) => {
                let threshold = timeout / 2;
                // Only a timeout of 1ns has no room for a threshold between 0 and it.
                if threshold.is_zero() {
                    let span = raw.discipline.as_ref().map_or(0..0, Spanned::span);
                    return Err(self.invalid(
                        span,
                        format!(
                            "\"adaptive_lifo\" needs a queue timeout above 1ns, got {}",
                            human(timeout)
                        ),
                    ));
                }
                threshold
            }
        };
        Ok(Discipline::AdaptiveLifo { threshold })
    }

    pub(crate) fn fairness(&self, v: &Spanned<String>) -> Checked<Fairness> {
        match v.get_ref().as_str() {
            "none" => Ok(Fairness::None),
            "per_key" => Ok(Fairness::PerKey),
            other => Err(self.invalid(
                v.span(),
                format!("unknown fairness {other:?}: expected \"none\" or \"per_key\""),
            )),
        }
    }

    /// `[[routes.classes]]`: at most `MAX_CLASSES`, names unique and not "default".
    pub(crate) fn classes(
        &self,
        raw: &Spanned<Vec<Spanned<RawClass>>>,
    ) -> Checked<Vec<ClassConfig>> {
        let list = raw.get_ref();
        if let Some(extra) = list.get(MAX_CLASSES) {
            return Err(self.invalid(
                extra.span(),
                format!(
                    "a route may have at most {MAX_CLASSES} classes (besides the implicit {DEFAULT_CLASS:?}), got {}",
                    list.len()
                ),
            ));
        }
        let mut seen: HashMap<&str, (usize, Range<usize>)> = HashMap::new();
        let mut classes = Vec::with_capacity(list.len());
        for (i, class) in list.iter().enumerate() {
            let name = &class.get_ref().name;
            if let Some((first, span)) = seen.get(name.get_ref().as_str()) {
                let (line, _) = line_column(self.src, span.start);
                return Err(self.invalid(
                    name.span(),
                    format!(
                        "duplicate class name {:?}: already used by classes[{first}] (line {line})",
                        name.get_ref()
                    ),
                ));
            }
            seen.insert(name.get_ref(), (i, name.span()));
            classes.push(self.class(class)?);
        }
        Ok(classes)
    }

    pub(crate) fn class(&self, raw: &Spanned<RawClass>) -> Checked<ClassConfig> {
        let class = raw.get_ref();
        let name = self.route_name(&class.name)?;
        if name == DEFAULT_CLASS {
            return Err(self.invalid(
                class.name.span(),
                format!(
                    "{DEFAULT_CLASS:?} is the implicit class of requests that match no other class; choose another name"
                ),
            ));
        }
        if let (Some(values), None) = (&class.values, &class.header) {
            return Err(self.invalid(
                values.span(),
                "only allowed together with `header` (the header whose value is compared)",
            ));
        }
        let matcher = self.class_match(raw)?;
        Ok(ClassConfig { name, matcher })
    }

    /// What a class matches on: exactly one of `header` (with `values`),
    /// `path_prefix` or `methods`.
    fn class_match(&self, raw: &Spanned<RawClass>) -> Checked<ClassMatch> {
        let class = raw.get_ref();
        Ok(match (&class.header, &class.path_prefix, &class.methods) {
            (Some(header), None, None) => {
                let Some(values) = &class.values else {
                    // The missing key has no span: blame `header`, name `values`.
                    return Err(self.invalid_key(
                        header.span(),
                        &self.sibling_key(&header.span(), "values"),
                        "required with `header`: the header values that put a request in this class",
                    ));
                };
                ClassMatch::Header {
                    name: parse_header_name(header.get_ref())
                        .map_err(|why| self.invalid(header.span(), why))?,
                    values: self.header_values(values)?,
                }
            }
            (None, Some(prefix), None) => ClassMatch::PathPrefix(self.path_prefix(prefix)?),
            (None, None, Some(methods)) => {
                if methods.get_ref().is_empty() {
                    return Err(self.invalid(
                        methods.span(),
                        "must list at least one method (an empty list would match no request)",
                    ));
                }
                ClassMatch::Methods(self.methods(methods.get_ref())?)
            }
            (None, None, None) => {
                return Err(self.invalid(
                    raw.span(),
                    "a class needs exactly one of `header` (with `values`), `path_prefix` or `methods`",
                ));
            }
            (header, prefix, methods) => {
                // Two or more: blame the one written later.
                let mut given: Vec<(&str, Range<usize>)> = [
                    ("header", header.as_ref().map(Spanned::span)),
                    ("path_prefix", prefix.as_ref().map(Spanned::span)),
                    ("methods", methods.as_ref().map(Spanned::span)),
                ]
                .into_iter()
                .filter_map(|(field, span)| Some((field, span?)))
                .collect();
                given.sort_by_key(|(_, span)| span.start);
                let (first, first_span) = given.first().cloned().unwrap_or(("header", 0..0));
                let second_span = given.get(1).map_or(0..0, |(_, span)| span.clone());
                let (line, _) = line_column(self.src, first_span.start);
                return Err(self.invalid(
                    second_span,
                    format!(
                        "a class matches on exactly one of `header`, `path_prefix` or `methods`, and this one already has `{first}` (line {line})"
                    ),
                ));
            }
        })
    }

    pub(crate) fn header_values(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Checked<Vec<String>> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                "must list at least one header value (an empty list would match no request)",
            ));
        }
        raw.get_ref()
            .iter()
            .map(|v| {
                http::HeaderValue::from_str(v.get_ref())
                    .map(|_| v.get_ref().clone())
                    .map_err(|_| {
                        self.invalid(
                            v.span(),
                            format!(
                                "{:?} can never be a header value (control characters are not allowed)",
                                v.get_ref()
                            ),
                        )
                    })
            })
            .collect()
    }
}
