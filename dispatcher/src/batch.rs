//! What every intake consumer does with a batch (`broker::consume_batches`
//! takes every message that is ready, up to a bound): apply what they carry
//! in one transaction, ack after the commit. A message that cannot be parsed is dead-lettered; a batch that
//! fails on the database is retried with its messages held (not requeued:
//! quorum queues would count each requeue towards the delivery limit, and
//! an outage must not dead-letter accepted work); a batch the database
//! refuses for its data is applied one by one so only the refused messages
//! are dead-lettered.

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use orq_shared::CancellationToken;
use orq_shared::broker::{self, Broker};
use orq_shared::repo::RepoError;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

/// What applying messages yields that several batches can combine.
pub trait Merge: Default {
    fn merge(&mut self, other: Self);
}

impl Merge for () {
    fn merge(&mut self, _: ()) {}
}

/// How one intake queue's messages are applied.
pub trait Intake: Send + Sync {
    /// What one AMQP message carries.
    type Wire: DeserializeOwned + Send;
    /// What is applied: a message carries one or several (a batch of an
    /// agent's reports).
    type Message: Send + Sync;
    type Out: Merge + Send;

    /// The messages one AMQP message carries, in order.
    fn unpack(wire: Self::Wire) -> Vec<Self::Message>;

    /// Applies a batch in one transaction.
    fn apply(
        &self,
        batch: &[Self::Message],
    ) -> impl Future<Output = Result<Self::Out, RepoError>> + Send;

    /// After the batch's messages were acked.
    fn done(&self, _out: Self::Out) {}
}

/// A database refusal of the data itself (SQLSTATE classes 22 and 23), which
/// retrying cannot cure.
pub fn is_data_error(e: &RepoError) -> bool {
    matches!(e, RepoError::Db(db) if db.code().is_some_and(|c| {
        let code = c.code();
        code.starts_with("22") || code.starts_with("23")
    }))
}

/// Applies messages one at a time; returns the combined result, the
/// indexes of the messages the database refused, and of those that failed
/// otherwise (to be redelivered).
async fn apply_each<I: Intake>(
    intake: &I,
    messages: &[I::Message],
) -> (I::Out, HashSet<usize>, HashSet<usize>) {
    let mut merged = I::Out::default();
    let mut refused = HashSet::new();
    let mut retry = HashSet::new();
    for (i, message) in messages.iter().enumerate() {
        match intake.apply(std::slice::from_ref(message)).await {
            Ok(r) => merged.merge(r),
            Err(e) if is_data_error(&e) => {
                tracing::warn!(error = %e, "message refused by the database; dead-lettered");
                refused.insert(i);
            }
            Err(e) => {
                tracing::warn!(error = %e, "message not applied; requeued");
                retry.insert(i);
            }
        }
    }
    (merged, refused, retry)
}

/// Consumes `queue` until shutdown, a batch of at most `batch_max` at a
/// time.
pub async fn consume<I: Intake>(
    broker: Broker,
    queue: String,
    batch_max: usize,
    shutdown: CancellationToken,
    intake: I,
) {
    let batch_max = batch_max.max(1);
    let open = broker::Queue {
        name: queue.clone(),
        prefetch: u16::try_from(batch_max * 2).unwrap_or(u16::MAX),
    };
    let (intake, queue, stop) = (&intake, queue.as_str(), &shutdown);
    broker::consume_batches(&broker, open, batch_max, stop, move |deliveries| {
        apply_batch(intake, queue, deliveries, stop)
    })
    .await
}

/// Applies one batch and acks its messages after the commit. Breaks on a
/// shutdown while the database is failing, the batch handed back.
async fn apply_batch<I: Intake>(
    intake: &I,
    queue: &str,
    deliveries: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> ControlFlow<()> {
    let mut messages = Vec::with_capacity(deliveries.len());
    // The delivery each message came in (an index into `ackers`).
    let mut carrier = Vec::with_capacity(deliveries.len());
    let mut ackers: Vec<lapin::Acker> = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        if let Some(wire) = broker::decode::<I::Wire>(&d, queue).await {
            for m in I::unpack(wire) {
                messages.push(m);
                carrier.push(ackers.len());
            }
            ackers.push(d.acker);
        }
    }
    let mut waits = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build();
    let result = loop {
        match intake.apply(&messages).await {
            Ok(result) => break result,
            Err(e) if is_data_error(&e) => {
                let (result, refused, retry) = apply_each(intake, &messages).await;
                // A delivery with a refused message is dead-lettered whole
                // (the others it carries are applied, and applying them
                // again is a no-op); one with a message to retry comes back.
                let refused: HashSet<usize> = refused.into_iter().map(|i| carrier[i]).collect();
                let retry: HashSet<usize> = retry
                    .into_iter()
                    .map(|i| carrier[i])
                    .filter(|d| !refused.contains(d))
                    .collect();
                for (i, acker) in ackers.iter().enumerate() {
                    if refused.contains(&i) {
                        let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                    } else if retry.contains(&i) {
                        let _ = acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                    }
                }
                ackers = ackers
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| !refused.contains(i) && !retry.contains(i))
                    .map(|(_, a)| a)
                    .collect();
                break result;
            }
            Err(e) => {
                tracing::warn!(error = %e, %queue, messages = messages.len(), "applying a batch failed; retrying");
                let wait = waits.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {
                        for a in ackers {
                            let _ = a.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                        return ControlFlow::Break(());
                    }
                }
            }
        }
    };
    // Sent together: each ack waits for the connection's writer, and one
    // at a time a batch waited for it once per message.
    futures::future::join_all(ackers.iter().map(|a| a.ack(BasicAckOptions::default()))).await;
    intake.done(result);
    ControlFlow::Continue(())
}
