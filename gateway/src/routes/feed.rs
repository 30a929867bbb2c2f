//! `GET /events/stream`: the customer's job events, live, as server-sent
//! events (for the dashboard, which reads it with `fetch` and its token in
//! the header; `?access_token=` works for clients that cannot send one).
//! Each event's SSE `id` is its place in the order of events: a client that
//! reconnects with `Last-Event-ID` (or `?after=`) gets what it missed. `?job_id=` follows one job.
//!
//! The feed polls PostgreSQL (every 250 ms) rather than holding a LISTEN
//! connection per client. An event's id is its place in the feed, given
//! once every older transaction ended (`jobs::release_feed`): a place is
//! never given below one already read, so resuming after an id misses
//! nothing and repeats nothing, however long a writer keeps its
//! transaction open (its events, and those after it, wait for it).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use orq_shared::domain::{CustomerId, JobId, Role};
use orq_shared::repo::jobs::{self, FeedEvent};
use orq_shared::repo::task_defs::Reader;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use crate::auth::{Authorized, Viewers};
use crate::error::{ApiError, Query};
use crate::state::AppState;

const POLL: Duration = Duration::from_millis(250);
/// Events given their place per release.
const RELEASE: i64 = 10_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    job_id: Option<String>,
    after: Option<i64>,
}

struct Feed {
    state: AppState,
    customer: CustomerId,
    admin: bool,
    name: Option<String>,
    job: Option<JobId>,
    /// Every event up to this place was sent (or is not for this reader).
    floor: i64,
    ready: VecDeque<FeedEvent>,
}

impl Feed {
    fn reader(&self) -> Reader<'_> {
        if self.admin {
            Reader::Admin
        } else {
            Reader::Named(self.name.as_deref())
        }
    }

    async fn poll(&mut self) -> Result<(), ApiError> {
        release(&self.state).await?;
        let db = self.state.db().await?;
        let events = jobs::events_after(
            &db,
            self.customer,
            self.floor,
            self.job,
            self.reader(),
            1000,
        )
        .await?;
        if let Some(last) = events.last() {
            self.floor = last.pos;
        }
        self.ready.extend(events);
        Ok(())
    }
}

/// Gives the events that became visible their place in the feed (unless
/// another gateway is doing it).
async fn release(state: &AppState) -> Result<(), ApiError> {
    loop {
        let released = state
            .in_transaction(async |tx| jobs::release_feed(tx, RELEASE).await)
            .await?;
        if released.is_none_or(|n| n < RELEASE as u64) {
            return Ok(());
        }
    }
}

/// Where a stream starts: after `Last-Event-ID` when it is a number, else
/// after `?after=`, else (None) after the newest event. Negative values
/// mean "from the start".
fn resume_after(last_event_id: Option<&str>, after: Option<i64>) -> Option<i64> {
    last_event_id
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(after)
        .map(|a| a.max(0))
}

#[utoipa::path(get, path = "/events/stream", operation_id = "feed_stream", tag = "events", params(FeedQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")), responses((status = 200, description = "Server-sent events, one per job event; each `id` is its place in the order of events", body = String, content_type = "text/event-stream"), crate::error::Refusals))]
pub async fn stream(
    State(state): State<AppState>,
    who: Authorized<Viewers>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let job = q
        .job_id
        .map(|j| {
            j.parse::<JobId>()
                .map_err(|_| ApiError::invalid_field("job_id", "job_id must be a job id"))
        })
        .transpose()?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or_default());
    let floor = match resume_after(last_event_id, q.after) {
        Some(after) => after,
        None => {
            release(&state).await?;
            jobs::last_feed_pos(&state.db().await?, who.customer_id).await?
        }
    };
    let feed = Feed {
        state,
        customer: who.customer_id,
        admin: who.role == Role::Admin,
        name: who.name.clone(),
        job,
        floor,
        ready: VecDeque::new(),
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(e) = feed.ready.pop_front() {
                let sse = SseEvent::default()
                    .id(e.pos.to_string())
                    .json_data(&e)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                return Some((Ok(sse), feed));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = feed.state.shutdown.cancelled() => return None,
            }
            if let Err(e) = feed.poll().await {
                // The database is away: the stream waits for it.
                tracing::debug!(error = %e.message, "event feed poll failed");
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_largest_event_id_resumes_without_overflow() {
        let max = i64::MAX.to_string();
        assert_eq!(resume_after(Some(&max), None), Some(i64::MAX));
        assert_eq!(resume_after(None, Some(i64::MAX)), Some(i64::MAX));
    }

    #[test]
    fn a_header_that_is_not_a_number_falls_back_to_after() {
        assert_eq!(resume_after(Some("x"), Some(7)), Some(7));
        assert_eq!(resume_after(Some(" 12 "), Some(7)), Some(12));
        assert_eq!(resume_after(Some("-5"), None), Some(0));
        assert_eq!(resume_after(Some("99999999999999999999"), None), None);
        assert_eq!(resume_after(None, None), None);
    }

    proptest! {
        /// Any `Last-Event-ID` and `after`: a start at or above zero, the
        /// header winning when it parses.
        #[test]
        fn any_resume_parameters_give_a_start_at_or_above_zero(
            header in proptest::option::of(any::<String>()),
            number in proptest::option::of(any::<i64>()),
            after in proptest::option::of(any::<i64>()),
        ) {
            let header = number.map(|n| n.to_string()).or(header);
            let start = resume_after(header.as_deref(), after);
            prop_assert!(start.is_none_or(|s| s >= 0));
            if let Some(n) = header.as_deref().and_then(|h| h.trim().parse::<i64>().ok()) {
                prop_assert_eq!(start, Some(n.max(0)));
            }
        }

    }
}
