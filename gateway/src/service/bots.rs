//! Bots: what both the admin's and the agent's routes do to one — making
//! sure its queue exists before any work is sent to it.

use orq_shared::domain::BotId;

use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bot's queue could not be declared: RabbitMQ is away.
    #[error("RabbitMQ is unavailable; retry shortly")]
    BrokerUnavailable,
}

/// Declares a bot's queue.
pub async fn declare_queue(state: &AppState, bot: BotId) -> Result<(), Error> {
    let Some(session) = state.broker.current() else {
        return Err(Error::BrokerUnavailable);
    };
    let declared = async {
        let ch = session.channel().await?;
        session.topology().declare_bot_queue(&ch, bot).await?;
        let _ = ch.close(200, "done".into()).await;
        Ok::<_, orq_shared::broker::BrokerError>(())
    };
    declared.await.map_err(|e| {
        tracing::warn!(error = %e, %bot, "declaring bot queue failed");
        Error::BrokerUnavailable
    })
}
