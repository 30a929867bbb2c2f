//! The agent's reports on their way to RabbitMQ. Queued in order, sent in
//! batches (a `ReportBatch`, or the report alone when it is the only one),
//! one batch at a time: a batch is published until RabbitMQ confirms it,
//! through outages and reconnections, before the next goes, so reports
//! arrive in the order they were made and none is dropped.
//!
//! A batch that starts while nothing is in flight waits `linger` for
//! company: a job that finishes within it sends RUNNING, its progress and
//! its outcome in one message. While a batch is being confirmed, what is
//! queued meanwhile makes the next one (group commit), so under load the
//! batches grow by themselves and nothing waits for the linger.

use backon::{BackoffBuilder, ExponentialBuilder};
use orq_shared::broker::{Broker, KEY_REPORTS};
use orq_shared::messages::BotReport;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most reports in one message.
const MAX_REPORTS: usize = 256;
/// A batch stops growing past this many bytes (a report larger than it
/// goes alone): outcomes carry output tails of up to tens of kilobytes.
const MAX_BYTES: usize = 256 * 1024;

/// Where reports are queued. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::UnboundedSender<Queued>,
}

struct Queued {
    id: Uuid,
    json: Vec<u8>,
    confirmed: oneshot::Sender<()>,
}

/// Resolves once RabbitMQ has confirmed a report, and with it every report
/// queued before it.
#[must_use = "a report is sent whether or not its receipt is awaited; await it to know RabbitMQ has it"]
pub struct Receipt(oneshot::Receiver<()>);

impl Receipt {
    /// Waits for the confirm. False only when the outbox stopped first
    /// (the agent is exiting): the report may not have been sent.
    pub async fn confirmed(self) -> bool {
        self.0.await.is_ok()
    }
}

impl Outbox {
    /// Starts the sender; it runs until every `Outbox` is dropped and the
    /// queue is empty.
    pub fn start(broker: Broker, linger: Duration) -> Outbox {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(broker, rx, linger));
        Outbox { queue }
    }

    /// Queues a report after those queued before it.
    pub fn send(&self, report: &BotReport) -> Receipt {
        let (confirmed, receipt) = oneshot::channel();
        match serde_json::to_vec(report) {
            Ok(json) => {
                let _ = self.queue.send(Queued {
                    id: report.id,
                    json,
                    confirmed,
                });
            }
            // A report of our own types always serializes; if one ever does
            // not, it cannot be sent, and its receipt says so.
            Err(e) => tracing::error!(error = %e, "a report could not be serialized"),
        }
        Receipt(receipt)
    }
}

async fn run(broker: Broker, mut queue: mpsc::UnboundedReceiver<Queued>, linger: Duration) {
    let mut carried: Option<Queued> = None;
    loop {
        // What waited behind the last batch goes at once; a batch that
        // starts from idle lingers.
        let (first, idle) = match carried.take() {
            Some(q) => (q, false),
            None => match queue.try_recv() {
                Ok(q) => (q, false),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => match queue.recv().await {
                    Some(q) => (q, true),
                    None => return,
                },
            },
        };
        let deadline = tokio::time::Instant::now() + linger;
        let mut bytes = first.json.len();
        let mut batch = vec![first];
        while batch.len() < MAX_REPORTS && bytes < MAX_BYTES {
            let next = match queue.try_recv() {
                Ok(q) => q,
                Err(mpsc::error::TryRecvError::Empty) if idle && !linger.is_zero() => {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(q)) => q,
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(_) => break,
            };
            if bytes + next.json.len() > MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.json.len();
            batch.push(next);
        }
        let (id, payload) = encode(&batch);
        publish_until_confirmed(&broker, id, &payload, batch.len()).await;
        metrics::counter!("orq_agent_report_messages_total").increment(1);
        metrics::counter!("orq_agent_reports_total").increment(batch.len() as u64);
        for q in batch {
            let _ = q.confirmed.send(());
        }
    }
}

/// The message for a batch: the report alone when it is the only one (what
/// every dispatcher reads), else a `ReportBatch` of the reports' own JSON.
fn encode(batch: &[Queued]) -> (Uuid, Vec<u8>) {
    if let [one] = batch {
        return (one.id, one.json.clone());
    }
    let id = Uuid::now_v7();
    let mut out = Vec::with_capacity(batch.iter().map(|q| q.json.len() + 1).sum::<usize>() + 64);
    out.extend_from_slice(format!(r#"{{"id":"{id}","reports":["#).as_bytes());
    for (i, q) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&q.json);
    }
    out.extend_from_slice(b"]}");
    (id, out)
}

/// Publishes until RabbitMQ confirms, waiting through outages (backing off
/// from 50 ms to 2 s): a report is never dropped.
async fn publish_until_confirmed(broker: &Broker, id: Uuid, payload: &[u8], reports: usize) {
    let mut waits = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .build();
    loop {
        let session = broker.session().await;
        let sent = match session.send_bytes(KEY_REPORTS, id, payload).await {
            Ok(pending) => pending.confirmed().await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, reports, "reports not published; retrying");
                tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(2))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orq_shared::domain::{BotId, CustomerId, JobId};
    use orq_shared::messages::{ReportBody, Reported};

    fn queued(body: ReportBody) -> (BotReport, Queued) {
        let report = BotReport::new(BotId::new(), CustomerId::new(), body);
        let q = Queued {
            id: report.id,
            json: serde_json::to_vec(&report).expect("serializes"),
            confirmed: oneshot::channel().0,
        };
        (report, q)
    }

    #[test]
    fn a_lone_report_goes_as_itself_and_several_as_a_batch_in_order() {
        let job_id = JobId::new();
        let (running, q1) = queued(ReportBody::Running { job_id, attempt: 1 });
        let (id, wire) = encode(std::slice::from_ref(&q1));
        assert_eq!(id, running.id, "its own id is the message's");
        let alone: BotReport = serde_json::from_slice(&wire).expect("a plain report");
        assert_eq!(alone, running);

        let (done, q2) = queued(ReportBody::Complete {
            job_id,
            attempt: 1,
            rows_total: 1,
        });
        let (id, wire) = encode(&[q1, q2]);
        let read: Reported = serde_json::from_slice(&wire).expect("a batch");
        match &read {
            Reported::Batch(b) => assert_eq!(b.id, id),
            Reported::One(_) => panic!("two reports must make a batch"),
        }
        assert_eq!(read.into_reports(), [running, done]);
    }
}
