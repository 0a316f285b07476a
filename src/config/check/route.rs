//! `[[routes]]`: matching (name, host, path prefix, methods, upgrades),
//! the upstream it names, the client key and the reject answer.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use http::StatusCode;
use toml::Spanned;

use super::deferred::async_upgrades;
use crate::config::defaults::{DEFAULT_PATH_PREFIX, DEFAULT_UPGRADE};
use crate::config::load::{Checked, Ctx};
use crate::config::locate::line_column;
use crate::config::model::{KeyPart, RejectConfig, RouteConfig, UpstreamConfig};
use crate::config::raw::{RawKey, RawReject, RawRoute};
use crate::config::values::{key_part_str, parse_header_name, parse_host, parse_method};

impl Ctx<'_> {
    pub(crate) fn routes(
        &self,
        raw: Option<Spanned<Vec<RawRoute>>>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        (redis, storage): (bool, bool),
    ) -> Checked<Vec<RouteConfig>> {
        const NONE: &str = "at least one route is required: add a [[routes]] table";
        let Some(raw) = raw else {
            // A missing key has no span to find it by.
            return Err(self.invalid_key(0..0, "routes", NONE));
        };
        if raw.get_ref().is_empty() {
            return Err(self.invalid(raw.span(), NONE));
        }
        // Route names are metric labels, so two routes must never share one.
        let mut seen: HashMap<String, (usize, Range<usize>)> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.get_ref().len());
        for (i, route) in raw.into_inner().into_iter().enumerate() {
            let name = route.name.get_ref();
            if let Some((first, span)) = seen.get(name) {
                let (line, _) = line_column(self.src, span.start);
                return Err(self.invalid(
                    route.name.span(),
                    format!("duplicate route name {name:?}: already used by routes[{first}] (line {line})"),
                ));
            }
            seen.insert(name.clone(), (i, route.name.span()));
            routes.push(self.route(route, upstreams, (redis, storage))?);
        }
        Ok(routes)
    }

    pub(crate) fn route(
        &self,
        raw: RawRoute,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        (redis, storage): (bool, bool),
    ) -> Checked<RouteConfig> {
        let deferred = self.deferred(&raw, (redis, storage))?;
        Ok(RouteConfig {
            name: self.route_name(&raw.name)?,
            host: raw.host.map(|v| self.host(&v)).transpose()?,
            path_prefix: raw
                .path_prefix
                .map_or(Ok(DEFAULT_PATH_PREFIX.to_string()), |v| {
                    self.path_prefix(&v)
                })?,
            methods: raw.methods.map_or(Ok(Vec::new()), |v| self.methods(&v))?,
            upstream: self.upstream_ref(&raw.upstream, upstreams)?,
            limit: raw
                .limit
                .as_ref()
                .map(|v| self.limit(v, redis))
                .transpose()?,
            queue: self.queue(&raw.queue)?,
            reject: self.reject(&raw.reject)?,
            key: raw
                .key
                .map_or(Ok(vec![KeyPart::ClientIp]), |v| self.key(&v))?,
            key_limit: raw.key_limit.map(|v| self.key_limit(&v)).transpose()?,
            classes: raw.classes.map_or(Ok(Vec::new()), |v| self.classes(&v))?,
            upgrades: async_upgrades(
                raw.upgrades.map_or_else(
                    || Ok(vec![DEFAULT_UPGRADE.to_string()]),
                    |v| self.upgrades(&v),
                )?,
                deferred.is_some(),
            ),
            deferred,
        })
    }

    pub(crate) fn route_name(&self, v: &Spanned<String>) -> Checked<String> {
        if v.get_ref().trim().is_empty() {
            return Err(self.invalid(v.span(), "must not be empty"));
        }
        Ok(v.get_ref().clone())
    }

    pub(crate) fn host(&self, v: &Spanned<String>) -> Checked<String> {
        parse_host(v.get_ref())
            .map_err(|why| self.invalid(v.span(), format!("invalid host {:?}: {why}", v.get_ref())))
    }

    pub(crate) fn path_prefix(&self, v: &Spanned<String>) -> Checked<String> {
        let prefix = v.get_ref();
        if !prefix.starts_with('/') {
            return Err(self.invalid(v.span(), format!("must start with '/', got {prefix:?}")));
        }
        // A request path never contains these, so such a route could never match.
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace())
        {
            return Err(self.invalid(
                v.span(),
                format!("must be a plain path, but {prefix:?} contains {c:?}"),
            ));
        }
        // Requests are matched on their normalised path; a prefix spelled
        // otherwise would never match.
        match crate::http::path::normalise(prefix) {
            Ok(normal) if normal == prefix.as_str() => Ok(prefix.clone()),
            Ok(normal) => Err(self.invalid(
                v.span(),
                format!(
                    "{prefix:?} is not a normal path (requests are matched after normalisation); write {normal:?}"
                ))),
            Err(why) => Err(self.invalid(v.span(), format!("{prefix:?}: {why}"))),
        }
    }

    /// `upgrades`: protocol names (RFC 9110 tokens), case-insensitive, each
    /// once; never "h2c", which would take the connection out of sluice's
    /// hands as HTTP/2 inside a tunnel.
    pub(crate) fn upgrades(&self, raw: &[Spanned<String>]) -> Checked<Vec<String>> {
        let mut upgrades: Vec<String> = Vec::with_capacity(raw.len());
        for v in raw.iter() {
            let name = v.get_ref().to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(self.invalid(
                    v.span(),
                    format!(
                        "{:?} is not a protocol name (a token such as \"websocket\", without a version)",
                        v.get_ref()
                    ),
                ));
            }
            if name == "h2c" {
                return Err(self.invalid(
                    v.span(),
                    "h2c is never tunnelled: HTTP/2 inside a tunnel would bypass shaping; clients can speak h2c to sluice directly (prior knowledge)",
                ));
            }
            if upgrades.contains(&name) {
                return Err(self.invalid(v.span(), format!("duplicate protocol {name:?}")));
            }
            upgrades.push(name);
        }
        Ok(upgrades)
    }

    pub(crate) fn methods(&self, raw: &[Spanned<String>]) -> Checked<Vec<http::Method>> {
        let mut methods: Vec<http::Method> = Vec::with_capacity(raw.len());
        for v in raw.iter() {
            let method = parse_method(v.get_ref()).map_err(|why| self.invalid(v.span(), why))?;
            if methods.contains(&method) {
                return Err(self.invalid(v.span(), format!("duplicate method {method}")));
            }
            methods.push(method);
        }
        Ok(methods)
    }

    pub(crate) fn upstream_ref(
        &self,
        v: &Spanned<String>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Checked<String> {
        let name = v.get_ref();
        if upstreams.contains_key(name) {
            return Ok(name.clone());
        }
        let known: Vec<String> = upstreams.keys().map(|k| format!("{k:?}")).collect();
        Err(self.invalid(
            v.span(),
            format!(
                "unknown upstream {name:?}; defined upstreams: {}",
                known.join(", ")
            ),
        ))
    }

    /// `key`: one part, or a non-empty list of distinct parts.
    pub(crate) fn key(&self, raw: &Spanned<RawKey>) -> Checked<Vec<KeyPart>> {
        match raw.get_ref() {
            RawKey::One(part) => Ok(vec![self.key_part(part, raw.span())?]),
            RawKey::Many(list) => {
                if list.is_empty() {
                    return Err(self.invalid(
                        raw.span(),
                        "must name at least one key part (\"client_ip\", \"path\" or \"header:NAME\")",
                    ));
                }
                let mut parts: Vec<KeyPart> = Vec::with_capacity(list.len());
                for v in list.iter() {
                    let part = self.key_part(v.get_ref(), v.span())?;
                    if let Some(first) = parts.iter().position(|p| *p == part) {
                        return Err(self.invalid(
                            v.span(),
                            format!(
                                "duplicate key part {:?}: already given as {}",
                                key_part_str(&part),
                                self.key_at(&list[first].span())
                            ),
                        ));
                    }
                    parts.push(part);
                }
                Ok(parts)
            }
        }
    }

    pub(crate) fn key_part(&self, part: &str, span: Range<usize>) -> Checked<KeyPart> {
        match part {
            "client_ip" => Ok(KeyPart::ClientIp),
            "path" => Ok(KeyPart::Path),
            _ => match part.strip_prefix("header:") {
                Some(name) => parse_header_name(name)
                    .map(KeyPart::Header)
                    .map_err(|why| self.invalid(span, format!("in key part {part:?}: {why}"))),
                None => Err(self.invalid(
                    span,
                    format!(
                        "unknown key part {part:?}: expected \"client_ip\", \"path\" or \"header:NAME\""
                    ))),
            },
        }
    }

    pub(crate) fn reject(&self, raw: &RawReject) -> Checked<RejectConfig> {
        let mut reject = RejectConfig::default();
        if let Some(v) = &raw.status {
            reject.status = self.reject_status(v)?;
        }
        if let Some(retry_after) = raw.retry_after {
            reject.retry_after = retry_after;
        }
        if let Some(v) = &raw.rate_limited_status {
            reject.rate_limited_status = self.reject_status(v)?;
        }
        Ok(reject)
    }

    pub(crate) fn reject_status(&self, v: &Spanned<i64>) -> Checked<StatusCode> {
        let n = *v.get_ref();
        u16::try_from(n)
            .ok()
            .filter(|n| (400..=599).contains(n))
            .and_then(|n| StatusCode::from_u16(n).ok())
            .ok_or_else(|| {
                self.invalid(
                    v.span(),
                    format!("must be an HTTP error status from 400 to 599, got {n}"),
                )
            })
    }
}
