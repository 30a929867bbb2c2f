//! The proof of concept's CSV tasks (jobs of kind `system`): checking a
//! definition, creating one, and a change by a user or by the bot that
//! runs it (a redefinition, a status).

use deadpool_postgres::GenericClient;
use orq_shared::attachment;
use orq_shared::domain::{CustomerId, JobEvent, JobId, JobStatus, Role};
use orq_shared::field::FieldError;
use orq_shared::repo::customers::Principal;
use orq_shared::repo::jobs::{self, Actor, Applied, NewTask, Outcome, Task};
use orq_shared::repo::webhooks::NewEndpoint;
use orq_shared::repo::{RepoError, bots};
use uuid::Uuid;

use super::fields::text_field;
use super::{jobs as job_service, webhooks};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a CSV task, or not one this caller may reach.
    #[error("task not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No bot of the customer runs the task's system.
    #[error("no bot of this customer runs system {0:?}")]
    UnknownSystem(String),
    /// A bot token sent a field of the definition.
    #[error("a bot token may change only a task's status, not {0}")]
    NotItsToChange(&'static str),
    /// A bot token that holds no bot the task is on.
    #[error("this bot token holds no bot that this task is on")]
    NotYourTask,
    /// Another request changed the task between its read and its update.
    #[error("task changed concurrently")]
    Changed,
    #[error(transparent)]
    Callback(#[from] webhooks::Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Whether a job of `kind` is reached through `/tasks`: these routes are
/// the proof of concept's, over CSV jobs. A run of a task definition is
/// reached through `/{customer}/job/{id}`, where its task's acls apply;
/// here only a bot may read one (an agent re-checks its assignments
/// through `GET /tasks/{id}`), and nobody may change one.
pub fn reachable(kind: &str, role: Role, reading: bool) -> bool {
    kind == "system" || (reading && role == Role::Bot)
}

/// `task` when `who` reaches it through `/tasks` (see `reachable`), else
/// not found.
pub fn csv_only(task: Task, who: &Principal, reading: bool) -> Result<Task, Error> {
    if reachable(&task.kind, who.role, reading) {
        Ok(task)
    } else {
        Err(Error::NotFound)
    }
}

/// A task's definition as a request gives it.
pub struct Definition<'a> {
    pub description: &'a str,
    pub system: &'a str,
    /// The CSV file, base64 encoded, with a header row.
    pub attachment: &'a str,
}

/// What a change request sends of a definition; `None`: unchanged.
#[derive(Debug, Default)]
pub struct Redefinition {
    pub description: Option<String>,
    pub system: Option<String>,
    pub attachment: Option<String>,
}

impl Redefinition {
    /// The first field sent, if any.
    fn first_sent(&self) -> Option<&'static str> {
        [
            ("description", self.description.is_some()),
            ("system", self.system.is_some()),
            ("attachment", self.attachment.is_some()),
        ]
        .into_iter()
        .find_map(|(field, sent)| sent.then_some(field))
    }
}

/// Checks a definition; returns it with its row count.
async fn validate(
    state: &AppState,
    db: &impl GenericClient,
    customer: CustomerId,
    def: Definition<'_>,
) -> Result<NewTask, Error> {
    let description = def.description.trim().to_string();
    if description.chars().count() > 2000 {
        return Err(
            FieldError::new("description", "description must be at most 2000 characters").into(),
        );
    }
    let system = text_field("system", def.system, 200)?;
    let rows = attachment::parse(def.attachment)
        .map_err(|e| FieldError::new("attachment", e.to_string()))?;
    let key = (customer, system.clone());
    let known = state.known_systems.contains_key(&key) || {
        let known = bots::system_known(db, customer, &system).await?;
        if known {
            state.known_systems.insert(key, ());
        }
        known
    };
    if !known {
        return Err(Error::UnknownSystem(system));
    }
    Ok(NewTask {
        description,
        system,
        attachment: def.attachment.split_ascii_whitespace().collect(),
        rows_total: i32::try_from(rows.len()).unwrap_or(i32::MAX),
        callback_id: None,
    })
}

/// Creates a task (WAITING) and its callback endpoint in the caller's
/// transaction. The caller wakes the dispatchers once it is committed.
pub async fn create(
    state: &AppState,
    tx: &impl GenericClient,
    customer: CustomerId,
    def: Definition<'_>,
    callback: Option<&NewEndpoint>,
) -> Result<Task, Error> {
    let mut new = validate(state, tx, customer, def).await?;
    new.callback_id = webhooks::create_callback(state, tx, customer, callback).await?;
    Ok(jobs::create(tx, customer, &new).await?)
}

/// The event that takes a job from `from` to the requested status.
pub fn event_for(from: JobStatus, to: JobStatus) -> Result<JobEvent, FieldError> {
    Ok(match to {
        JobStatus::Running => JobEvent::Start,
        JobStatus::Complete => JobEvent::Complete,
        JobStatus::Failed => JobEvent::Fail,
        JobStatus::Canceled => JobEvent::Cancel,
        JobStatus::Timeout => JobEvent::TimedOut,
        // Handing a job back: it waits for another bot.
        JobStatus::Waiting if from == JobStatus::Assigned => JobEvent::DeliveryFailed,
        JobStatus::Waiting => JobEvent::BotLost { retry: true },
        JobStatus::Assigned => {
            return Err(FieldError::new(
                "status",
                "ASSIGNED is set by the dispatcher only",
            ));
        }
    })
}

/// What a `bot` token may change of a task: only its status — it does not
/// redefine a task.
pub fn bot_may_redefine(change: &Redefinition) -> Result<(), Error> {
    match change.first_sent() {
        Some(field) => Err(Error::NotItsToChange(field)),
        None => Ok(()),
    }
}

/// A `bot` token reports only on the tasks of the bots it holds: `holder`
/// is the token holding the task's bot (`None`: no bot, or none holds it).
pub fn bot_holds(holder: Option<Uuid>, token: Uuid) -> Result<(), Error> {
    if holder == Some(token) {
        Ok(())
    } else {
        Err(Error::NotYourTask)
    }
}

/// Whether a change wakes the dispatchers: it freed a bot's slot, or the
/// task waits for one.
pub fn wakes(released: bool, status: JobStatus) -> bool {
    released || status == JobStatus::Waiting
}

/// Changes a task: its definition (checked as on create), then its status
/// (through the jobs' transition), in one transaction; a bot token only
/// the status of a task on a bot it holds. Wakes the dispatchers when the
/// change frees a slot or leaves the task waiting.
pub async fn update(
    state: &AppState,
    who: &Principal,
    id: JobId,
    status: Option<JobStatus>,
    change: Redefinition,
) -> Result<Task, Error> {
    let customer = who.customer_id;
    let (task, released) = state
        .in_transaction(async |tx| {
            let current = csv_only(jobs::get(tx, customer, id).await?, who, false)?;
            if who.role == Role::Bot {
                bot_may_redefine(&change)?;
                let holder = match current.bot_id {
                    Some(bot) => bots::holder(tx, customer, bot).await?,
                    None => None,
                };
                bot_holds(holder, who.token_id)?;
            }
            let new = if change.first_sent().is_some() {
                let attachment = change
                    .attachment
                    .as_deref()
                    .or(current.attachment.as_deref())
                    .unwrap_or_default();
                let def = Definition {
                    description: change
                        .description
                        .as_deref()
                        .unwrap_or(&current.description),
                    system: change.system.as_deref().unwrap_or(&current.system),
                    attachment,
                };
                Some(validate(state, tx, customer, def).await?)
            } else {
                None
            };
            let mut task = current;
            if let Some(new) = &new
                && (new.description != task.description
                    || new.system != task.system
                    || Some(&new.attachment) != task.attachment.as_ref())
            {
                task = jobs::update_definition(tx, customer, id, new).await?;
            }
            let mut released = false;
            if let Some(to) = status
                && to != task.status
            {
                let event = event_for(task.status, to)?;
                match jobs::transition(
                    tx,
                    customer,
                    id,
                    Actor::Api,
                    event,
                    &Outcome::default(),
                    Uuid::now_v7(),
                    time::OffsetDateTime::now_utc(),
                )
                .await?
                {
                    Applied::Done { from, task: t } => {
                        released = from.is_active() && !t.status.is_active();
                        task = *t;
                    }
                    Applied::Stale { .. } => return Err(Error::Changed),
                }
            }
            Ok::<_, Error>((task, released))
        })
        .await?;
    if wakes(released, task.status) {
        job_service::wake(state, customer, Some(id));
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_csv_tasks_are_reached_except_a_bot_reading_its_run() {
        for role in [Role::Admin, Role::Bot] {
            for reading in [true, false] {
                assert!(reachable("system", role, reading));
            }
        }
        assert!(reachable("script", Role::Bot, true));
        assert!(!reachable("script", Role::Bot, false));
        assert!(!reachable("script", Role::Admin, true));
        assert!(!reachable("script", Role::Admin, false));
    }

    #[test]
    fn each_status_asked_for_is_one_event() {
        use JobStatus as S;
        let cases = [
            (S::Assigned, S::Running, JobEvent::Start),
            (S::Running, S::Complete, JobEvent::Complete),
            (S::Running, S::Failed, JobEvent::Fail),
            (S::Waiting, S::Canceled, JobEvent::Cancel),
            (S::Running, S::Timeout, JobEvent::TimedOut),
            (S::Assigned, S::Waiting, JobEvent::DeliveryFailed),
            (S::Running, S::Waiting, JobEvent::BotLost { retry: true }),
        ];
        for (from, to, event) in cases {
            assert_eq!(
                event_for(from, to).expect("an event"),
                event,
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn nobody_asks_for_assigned() {
        for from in JobStatus::ALL {
            let e = event_for(*from, JobStatus::Assigned).expect_err("refused");
            assert_eq!(e.field, "status");
            assert_eq!(e.message, "ASSIGNED is set by the dispatcher only");
        }
    }

    #[test]
    fn a_bot_changes_a_task_it_holds_and_only_its_status() {
        assert!(bot_may_redefine(&Redefinition::default()).is_ok());
        let sent = Redefinition {
            system: Some("x".into()),
            attachment: Some("y".into()),
            ..Redefinition::default()
        };
        let e = bot_may_redefine(&sent).expect_err("redefines");
        assert!(matches!(e, Error::NotItsToChange("system")));
        assert_eq!(
            e.to_string(),
            "a bot token may change only a task's status, not system"
        );
        let token = Uuid::now_v7();
        assert!(bot_holds(Some(token), token).is_ok());
        assert!(matches!(
            bot_holds(Some(Uuid::now_v7()), token),
            Err(Error::NotYourTask)
        ));
        assert!(matches!(bot_holds(None, token), Err(Error::NotYourTask)));
    }

    #[test]
    fn a_change_wakes_when_it_frees_a_slot_or_leaves_the_task_waiting() {
        assert!(wakes(true, JobStatus::Complete));
        assert!(wakes(false, JobStatus::Waiting));
        assert!(!wakes(false, JobStatus::Running));
    }
}
