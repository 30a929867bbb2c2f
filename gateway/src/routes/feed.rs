//! `GET /events/stream`: the customer's job events, live, as server-sent
//! events (for the dashboard, which reads it with `fetch` and its token in
//! the header; `?access_token=` works for clients that cannot send one).
//! Each event's SSE `id` is its place in the order of events: a client that
//! reconnects with `Last-Event-ID` (or `?after=`) gets what it missed. `?job_id=` follows one job.
//!
//! The feed polls PostgreSQL (every 250 ms) rather than holding a LISTEN
//! connection per client. Events are numbered when written, and a
//! transaction may commit after one with a higher number: the feed re-reads
//! the last `SETTLE` of events and sends what it has not sent yet.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use orq_shared::domain::{CustomerId, JobId, Role};
use orq_shared::repo::jobs::{self, FeedEvent};
use orq_shared::repo::task_defs::Reader;
use serde::Deserialize;
use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use crate::auth::Auth;
use crate::error::{ApiError, Query};
use crate::state::AppState;

const POLL: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_secs(2);

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
    /// Every event up to here was sent (or is not for this reader).
    floor: i64,
    /// Sent events above the floor.
    sent: BTreeSet<i64>,
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
        let db = self.state.db().await?;
        let events = jobs::events_after(
            &db,
            self.customer,
            self.floor,
            self.job,
            self.reader(),
            SETTLE,
            1000,
        )
        .await?;
        // The floor moves up to the last event before the first recent one:
        // below that, nothing can still appear.
        let mut settled = self.floor;
        let mut open = false;
        for e in events {
            open |= e.recent;
            if !open {
                settled = e.seq;
            }
            if self.sent.insert(e.seq) {
                self.ready.push_back(e);
            }
        }
        self.floor = settled;
        self.sent = self.sent.split_off(&(settled + 1));
        Ok(())
    }
}

#[utoipa::path(get, path = "/events/stream", operation_id = "feed_stream", tag = "events", params(FeedQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")), responses((status = 200, description = "Server-sent events, one per job event; each `id` is its place in the order of events", body = String, content_type = "text/event-stream"), crate::error::Refusals))]
pub async fn stream(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let who = auth.require(&[Role::Viewer])?.clone();
    let job = q
        .job_id
        .map(|j| {
            j.parse::<JobId>()
                .map_err(|_| ApiError::invalid_field("job_id", "job_id must be a job id"))
        })
        .transpose()?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let floor = match last_event_id.or(q.after) {
        Some(after) => after.max(0),
        None => jobs::last_event_seq(&state.db().await?, who.customer_id).await?,
    };
    let feed = Feed {
        state,
        customer: who.customer_id,
        admin: who.role == Role::Admin,
        name: who.name.clone(),
        job,
        floor,
        sent: BTreeSet::new(),
        ready: VecDeque::new(),
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(e) = feed.ready.pop_front() {
                let sse = SseEvent::default()
                    .id(e.seq.to_string())
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
