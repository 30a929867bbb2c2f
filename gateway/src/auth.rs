//! Who is calling: a token from `Authorization: Bearer` or `?access_token=`,
//! resolved to its customer and role. Every handler scopes its queries to
//! that customer.
//!
//! Handlers take the caller as a typed extractor that says who may call:
//! `Authorized<Users>` (a role), `Scoped<Admins>` (a role in the path's
//! `{customer}`), `Worker` and `SignedWorker` (field workers). The token
//! is checked first (401), then the role and the customer (403); `Scoped`
//! reads the path between them (a path that does not decode is a 400).
//! Take the caller before `ids::Id`, so a 401 or 403 comes before any 404.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use orq_shared::domain::Role;
use orq_shared::human::{WorkerClaims, same_email};
use orq_shared::repo::customers::{self, Principal};
use serde::Deserialize;
use std::marker::PhantomData;
use std::ops::Deref;

use crate::error::{ApiError, Path, Query};
use crate::state::AppState;

/// Any holder of a valid token.
pub struct Auth(pub Principal);

impl Auth {
    /// Passes when the caller's role is one of `roles` (ranked: `User`
    /// admits `Admin` too).
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, ApiError> {
        if roles.iter().any(|r| self.0.role.allows(*r)) {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this (needs {})",
                self.0.role,
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }
}

/// The token a request presents, from the header or the query string.
pub fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let query = parts.uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = presented_token(parts).ok_or_else(ApiError::unauthorized)?;
        let key = orq_shared::token::hash(&token);
        if let Some(principal) = state.principals.get(&key) {
            return Ok(Auth(principal));
        }
        let db = state.db().await?;
        let principal = customers::authenticate(&db, &token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        state.principals.insert(key, principal.clone());
        Ok(Auth(principal))
    }
}

/// The roles a route admits, as a type, so that a handler's signature says
/// who may call it.
pub trait Roles: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

macro_rules! roles {
    ($($(#[$doc:meta])* $name:ident = [$($role:ident),+];)*) => {
        $($(#[$doc])*
        pub enum $name {}

        impl Roles for $name {
            const ROLES: &'static [Role] = &[$(Role::$role),+];
        }
        )*
    };
}

roles! {
    /// Readers: viewers, users and admins.
    Viewers = [Viewer];
    /// Users and admins.
    Users = [User];
    Admins = [Admin];
    /// Agents and legacy bots.
    Bots = [Bot];
    Workers = [Worker];
    /// Readers, and bots: who reads bots and CSV tasks.
    ViewersOrBots = [Viewer, Bot];
    /// Users, and bots: who reports on CSV tasks.
    UsersOrBots = [User, Bot];
    /// Admins, and bots: who changes a bot.
    AdminsOrBots = [Admin, Bot];
}

/// A caller whose role is one of `R`'s.
pub struct Authorized<R: Roles> {
    who: Principal,
    roles: PhantomData<R>,
}

impl<R: Roles> Deref for Authorized<R> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.who
    }
}

impl<R: Roles> Authorized<R> {
    /// `auth`, if its role is one of `R`'s.
    pub fn check(auth: Auth) -> Result<Self, ApiError> {
        auth.require(R::ROLES)?;
        Ok(Authorized {
            who: auth.0,
            roles: PhantomData,
        })
    }
}

impl<R: Roles> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::check(Auth::from_request_parts(parts, state).await?)
    }
}

/// The caller of a `/{customer}/...` route: its role is one of `R`'s and
/// its token belongs to `{customer}`.
pub struct Scoped<R: Roles>(Authorized<R>);

impl<R: Roles> Deref for Scoped<R> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<R: Roles> Scoped<R> {
    /// `auth`, if its role is one of `R`'s and it belongs to `customer`
    /// (a name).
    pub fn check(auth: Auth, customer: &str) -> Result<Self, ApiError> {
        let who = Authorized::check(auth)?;
        if who.customer != customer {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_customer",
                format!("this token does not belong to customer {customer:?}"),
            ));
        }
        Ok(Scoped(who))
    }
}

#[derive(Deserialize)]
struct CustomerParam {
    customer: String,
}

impl<R: Roles> FromRequestParts<AppState> for Scoped<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let Path(CustomerParam { customer }) = Path::from_request_parts(parts, state).await?;
        Self::check(auth, &customer)
    }
}

/// `?sofier=`: the seed's worker e-mail. When given it must be the e-mail
/// the token is bound to.
#[derive(Deserialize)]
struct Sofier {
    sofier: Option<String>,
}

async fn check_sofier(parts: &mut Parts, bound: &str) -> Result<(), ApiError> {
    let Query(Sofier { sofier }) = Query::from_request_parts(parts, &()).await?;
    match sofier {
        Some(sofier) if !same_email(&sofier, bound) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sofier_mismatch",
            format!("sofier {sofier:?} is not the worker this token belongs to"),
        )),
        _ => Ok(()),
    }
}

/// A field worker on the routes that use the database: the token is looked
/// up, so a revoked one stops working at once (within the token cache's
/// TTL).
pub struct Worker {
    pub who: Principal,
    /// The e-mail the token is bound to.
    pub email: String,
}

impl FromRequestParts<AppState> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = Authorized::<Workers>::from_request_parts(parts, state).await?;
        let email = who
            .name
            .clone()
            .ok_or_else(|| ApiError::forbidden("this worker token names no e-mail"))?;
        check_sofier(parts, &email).await?;
        Ok(Worker {
            who: who.who,
            email,
        })
    }
}

/// A field worker on the finish path, from the token's signature alone.
pub struct SignedWorker(pub WorkerClaims);

impl FromRequestParts<AppState> for SignedWorker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = presented_token(parts).ok_or_else(ApiError::unauthorized)?;
        let Some(claims) = state.worker_tokens.verify(&token) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a worker token is required (Authorization: Bearer <token> or ?access_token=<token>)",
            ));
        };
        check_sofier(parts, &claims.email).await?;
        Ok(SignedWorker(claims))
    }
}
