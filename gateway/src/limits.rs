//! Rate limits on the public edge (`[limits]`): per access token and per
//! client address, by route class — the mobile apps' finishes, every other
//! write, reads. A request over a limit is `429 rate_limited` with
//! `Retry-After` (whole seconds) and the JSON error, before anything else
//! runs (no token lookup, no database).
//!
//! The counters (GCRA, from `governor`) live in this process: each copy of
//! the gateway allows the configured rate, so N copies behind a balancer
//! allow up to N times it. Keys not seen for a while are dropped every
//! minute, so random tokens cannot grow the tables without bound.

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use orq_shared::config::{LimitSettings, RouteLimit};
use orq_shared::deny::DenyList;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;

/// What a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Finish,
    Create,
    Read,
}

impl Class {
    /// The class of a request, from its method and route pattern.
    pub fn of(method: &Method, route: Option<&str>) -> Class {
        if route.is_some_and(|r| r.ends_with("/finish")) && method == Method::POST {
            Class::Finish
        } else if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
            Class::Read
        } else {
            Class::Create
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Class::Finish => "finish",
            Class::Create => "create",
            Class::Read => "read",
        }
    }
}

struct Pair {
    /// Keyed by `orq_shared::token::hash`, as tokens are stored.
    token: Option<DefaultKeyedRateLimiter<Vec<u8>>>,
    address: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// The limiters of every class, shared by all requests of one gateway.
pub struct Limits {
    finish: Pair,
    create: Pair,
    read: Pair,
    /// Addresses the per-address limits skip; reuses the deny-list matcher,
    /// so `::ffff:127.0.0.1` is exempt when 127.0.0.0/8 is.
    exempt: DenyList,
    clock: DefaultClock,
}

/// Per minute, with a burst of `burst_seconds` seconds' worth (at least 1).
fn quota(per_minute: u32, burst_seconds: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_minute)?;
    let burst = (u64::from(per_minute) * u64::from(burst_seconds.max(1)) / 60).max(1);
    let burst =
        NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(rate).allow_burst(burst))
}

fn pair(limit: &RouteLimit) -> Pair {
    Pair {
        token: quota(limit.per_token, limit.burst_seconds).map(RateLimiter::keyed),
        address: quota(limit.per_address, limit.burst_seconds).map(RateLimiter::keyed),
    }
}

/// Why a request was refused: the limit, whose, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub class: Class,
    pub per: &'static str,
    pub retry_after: Duration,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Result<Limits, String> {
        Ok(Limits {
            finish: pair(&settings.finish),
            create: pair(&settings.create),
            read: pair(&settings.read),
            exempt: DenyList::parse("limits.address_exempt", &settings.address_exempt)?,
            clock: DefaultClock::default(),
        })
    }

    /// Counts one request of `class` from `token` (its hash) and
    /// `address`; `Err` when either is over its limit.
    pub fn check(
        &self,
        class: Class,
        token: Option<&Vec<u8>>,
        address: Option<IpAddr>,
    ) -> Result<(), Exceeded> {
        let pair = match class {
            Class::Finish => &self.finish,
            Class::Create => &self.create,
            Class::Read => &self.read,
        };
        let refused = |per, not_until: governor::NotUntil<_>| Exceeded {
            class,
            per,
            retry_after: not_until.wait_time_from(self.clock.now()),
        };
        if let (Some(limiter), Some(address)) = (&pair.address, address)
            && self.exempt.check(address).is_ok()
        {
            limiter
                .check_key(&address)
                .map_err(|n| refused("address", n))?;
        }
        if let (Some(limiter), Some(token)) = (&pair.token, token) {
            limiter.check_key(token).map_err(|n| refused("token", n))?;
        }
        Ok(())
    }

    /// Forgets keys whose limit has fully recovered.
    pub fn forget_idle(&self) {
        for pair in [&self.finish, &self.create, &self.read] {
            if let Some(l) = &pair.token {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &pair.address {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}

/// The middleware: classifies, keys and counts each request.
pub async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let class = Class::of(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let token = crate::auth::presented_token(&parts).map(|t| orq_shared::token::hash(&t));
    match limits.check(class, token.as_ref(), address) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => refusal(e),
    }
}

fn refusal(e: Exceeded) -> Response {
    metrics::counter!("orq_gateway_rate_limited_total", "class" => e.class.as_str(), "per" => e.per)
        .increment(1);
    let seconds = e.retry_after.as_secs() + u64::from(e.retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many {} requests for this {}; retry in {seconds} s",
            e.class.as_str(),
            e.per
        ),
    );
    error.details = serde_json::json!({
        "limit": e.class.as_str(),
        "per": e.per,
        "retry_after_seconds": seconds,
    });
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, seconds.into());
    response
}

/// Drops idle keys once a minute until `shutdown`, on `tracker`.
pub fn spawn_janitor(
    tracker: &tokio_util::task::TaskTracker,
    limits: Arc<Limits>,
    shutdown: orq_shared::CancellationToken,
) {
    tracker.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => limits.forget_idle(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_token: u32, per_address: u32) -> LimitSettings {
        let limit = RouteLimit {
            per_token,
            per_address,
            burst_seconds: 1,
        };
        LimitSettings {
            finish: limit,
            create: limit,
            read: limit,
            address_exempt: vec!["127.0.0.0/8".into()],
        }
    }

    #[test]
    fn requests_are_classed_by_method_and_route() {
        let finish = Some("/micro_task/execution/{id}/finish");
        assert_eq!(Class::of(&Method::POST, finish), Class::Finish);
        assert_eq!(Class::of(&Method::GET, finish), Class::Read);
        assert_eq!(Class::of(&Method::POST, Some("/tasks")), Class::Create);
        assert_eq!(
            Class::of(&Method::DELETE, Some("/bots/{id}")),
            Class::Create
        );
        assert_eq!(Class::of(&Method::GET, None), Class::Read);
    }

    #[test]
    fn a_token_over_its_rate_is_refused_with_a_wait_and_others_are_not() {
        // 60 a minute with a one-second burst: one now, the next in a second.
        let limits = Limits::new(&settings(60, 0)).expect("limits");
        let (a, b) = (vec![1u8; 32], vec![2u8; 32]);
        assert!(limits.check(Class::Create, Some(&a), None).is_ok());
        let e = limits
            .check(Class::Create, Some(&a), None)
            .expect_err("over");
        assert_eq!((e.class, e.per), (Class::Create, "token"));
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_secs(1));
        assert!(limits.check(Class::Create, Some(&b), None).is_ok());
        // Classes count apart.
        assert!(limits.check(Class::Read, Some(&a), None).is_ok());
    }

    #[test]
    fn an_address_is_limited_whatever_token_it_sends_unless_exempt() {
        let limits = Limits::new(&settings(0, 60)).expect("limits");
        let far: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(
            limits
                .check(Class::Read, Some(&vec![1; 32]), Some(far))
                .is_ok()
        );
        let e = limits
            .check(Class::Read, Some(&vec![2; 32]), Some(far))
            .expect_err("over");
        assert_eq!(e.per, "address");
        let near: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        for _ in 0..10 {
            assert!(limits.check(Class::Read, None, Some(near)).is_ok());
        }
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = Limits::new(&settings(0, 0)).expect("limits");
        for _ in 0..1000 {
            assert!(
                limits
                    .check(
                        Class::Finish,
                        Some(&vec![1; 32]),
                        "203.0.113.9".parse().ok()
                    )
                    .is_ok()
            );
        }
    }

    #[test]
    fn the_burst_is_seconds_of_the_rate_and_at_least_one() {
        assert_eq!(quota(600, 2).map(|q| q.burst_size().get()), Some(20));
        assert_eq!(quota(6, 2).map(|q| q.burst_size().get()), Some(1));
        assert!(quota(0, 2).is_none());
    }
}
