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
    pub(crate) fn queue(&self, key: &str, raw: &RawQueue) -> Checked<QueueConfig> {
        let capacity = raw
            .capacity
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_CAPACITY), |v| {
                self.between(&format!("{key}.capacity"), v, 0, MAX_QUEUE_CAPACITY)
            })?;
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_TIMEOUT), |v| {
                self.positive_duration(&format!("{key}.timeout"), v)
            })?;
        // The defaults of the other keys live in `QueueConfig::new`.
        let mut queue = QueueConfig::new(capacity, timeout);
        queue.discipline = self.discipline(key, raw, timeout)?;
        if let Some(v) = &raw.fairness {
            queue.fairness = self.fairness(&format!("{key}.fairness"), v)?;
        }
        if let Some(v) = &raw.aging {
            queue.aging = self.positive_duration(&format!("{key}.aging"), v)?;
        }
        Ok(queue)
    }

    /// `discipline` and the `lifo_threshold` that only goes with "adaptive_lifo".
    pub(crate) fn discipline(
        &self,
        key: &str,
        raw: &RawQueue,
        timeout: Duration,
    ) -> Checked<Discipline> {
        let threshold_key = format!("{key}.lifo_threshold");
        let adaptive = match &raw.discipline {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "fifo" => false,
                "adaptive_lifo" => true,
                other => {
                    return Err(self.invalid(
                        v.span(),
                        &format!("{key}.discipline"),
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
                    &threshold_key,
                    "only allowed with discipline = \"adaptive_lifo\" (the default discipline is \"fifo\")",
                ));
            }
            (Some(v), true) => {
                let threshold = self.positive_duration(&threshold_key, v)?;
                if threshold >= timeout {
                    return Err(self.invalid(
                        v.span(),
                        &threshold_key,
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
                        &format!("{key}.discipline"),
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

    pub(crate) fn fairness(&self, key: &str, v: &Spanned<String>) -> Checked<Fairness> {
        match v.get_ref().as_str() {
            "none" => Ok(Fairness::None),
            "per_key" => Ok(Fairness::PerKey),
            other => Err(self.invalid(
                v.span(),
                key,
                format!("unknown fairness {other:?}: expected \"none\" or \"per_key\""),
            )),
        }
    }

    /// `[[routes.classes]]`: at most `MAX_CLASSES`, names unique and not "default".
    pub(crate) fn classes(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<RawClass>>>,
    ) -> Checked<Vec<ClassConfig>> {
        let list = raw.get_ref();
        if let Some(extra) = list.get(MAX_CLASSES) {
            return Err(self.invalid(
                extra.span(),
                &format!("{key}[{MAX_CLASSES}]"),
                format!(
                    "a route may have at most {MAX_CLASSES} classes (besides the implicit {DEFAULT_CLASS:?}), got {}",
                    list.len()
                ),
            ));
        }
        let mut seen: HashMap<&str, (usize, Range<usize>)> = HashMap::new();
        let mut classes = Vec::with_capacity(list.len());
        for (i, class) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let name = &class.get_ref().name;
            if let Some((first, span)) = seen.get(name.get_ref().as_str()) {
                let (line, _) = line_column(self.src, span.start);
                return Err(self.invalid(
                    name.span(),
                    &format!("{key}.name"),
                    format!(
                        "duplicate class name {:?}: already used by classes[{first}] (line {line})",
                        name.get_ref()
                    ),
                ));
            }
            seen.insert(name.get_ref(), (i, name.span()));
            classes.push(self.class(&key, class)?);
        }
        Ok(classes)
    }

    pub(crate) fn class(&self, key: &str, raw: &Spanned<RawClass>) -> Checked<ClassConfig> {
        let class = raw.get_ref();
        let name_key = format!("{key}.name");
        let name = self.route_name(&name_key, &class.name)?;
        if name == DEFAULT_CLASS {
            return Err(self.invalid(
                class.name.span(),
                &name_key,
                format!(
                    "{DEFAULT_CLASS:?} is the implicit class of requests that match no other class; choose another name"
                ),
            ));
        }
        if let (Some(values), None) = (&class.values, &class.header) {
            return Err(self.invalid(
                values.span(),
                &format!("{key}.values"),
                "only allowed together with `header` (the header whose value is compared)",
            ));
        }
        let matcher = self.class_match(key, raw)?;
        Ok(ClassConfig { name, matcher })
    }

    /// What a class matches on: exactly one of `header` (with `values`),
    /// `path_prefix` or `methods`.
    fn class_match(&self, key: &str, raw: &Spanned<RawClass>) -> Checked<ClassMatch> {
        let class = raw.get_ref();
        Ok(match (&class.header, &class.path_prefix, &class.methods) {
            (Some(header), None, None) => {
                let values_key = format!("{key}.values");
                let Some(values) = &class.values else {
                    return Err(self.invalid(
                        header.span(),
                        &values_key,
                        "required with `header`: the header values that put a request in this class",
                    ));
                };
                ClassMatch::Header {
                    name: parse_header_name(header.get_ref()).map_err(|why| {
                        self.invalid(header.span(), &format!("{key}.header"), why)
                    })?,
                    values: self.header_values(&values_key, values)?,
                }
            }
            (None, Some(prefix), None) => {
                ClassMatch::PathPrefix(self.path_prefix(&format!("{key}.path_prefix"), prefix)?)
            }
            (None, None, Some(methods)) => {
                let methods_key = format!("{key}.methods");
                if methods.get_ref().is_empty() {
                    return Err(self.invalid(
                        methods.span(),
                        &methods_key,
                        "must list at least one method (an empty list would match no request)",
                    ));
                }
                ClassMatch::Methods(self.methods(&methods_key, methods.get_ref())?)
            }
            (None, None, None) => {
                return Err(self.invalid(
                    raw.span(),
                    key,
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
                let (second, second_span) = given.get(1).cloned().unwrap_or((first, 0..0));
                let (line, _) = line_column(self.src, first_span.start);
                return Err(self.invalid(
                    second_span,
                    &format!("{key}.{second}"),
                    format!(
                        "a class matches on exactly one of `header`, `path_prefix` or `methods`, and this one already has `{first}` (line {line})"
                    ),
                ));
            }
        })
    }

    pub(crate) fn header_values(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Checked<Vec<String>> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                key,
                "must list at least one header value (an empty list would match no request)",
            ));
        }
        raw.get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                http::HeaderValue::from_str(v.get_ref())
                    .map(|_| v.get_ref().clone())
                    .map_err(|_| {
                        self.invalid(
                            v.span(),
                            &format!("{key}[{i}]"),
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
