//! `Api`: one customer's view of a running gateway — its URL, the
//! customer's name and an admin client — with the calls tests repeat:
//! TheEye's scripts, tasks and jobs, and human tasks (micro-tasks published
//! by the admin, reserved, started and finished by a `Worker`). The same
//! calls serve a gateway in process (`gateway/tests/api`) and one started
//! as a binary (`Env::api`).

use serde_json::{Value, json};
use std::time::Duration;

use crate::{client_with, eventually};

#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub gw: String,
    pub customer: String,
    /// Sends the customer's admin token.
    pub admin: reqwest::Client,
}

/// The `id` of an answer, or "".
pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// The status of an answer and its body (`null` when it is not JSON).
pub async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let r = request.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// `request`'s JSON answer, which must be `expect`ed; else an error
/// naming `what`, the status and the body.
async fn expect(
    request: reqwest::RequestBuilder,
    expect: u16,
    what: &str,
) -> anyhow::Result<Value> {
    let r = request.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    anyhow::ensure!(status == expect, "{what}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

impl Api {
    pub fn new(gw: &str, customer: &str, admin_token: &str) -> Api {
        Api {
            gw: gw.to_string(),
            customer: customer.to_string(),
            admin: client_with(admin_token),
        }
    }

    /// `{gw}/{customer}{path}`: TheEye's and the micro-tasks' admin routes.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}{}", self.gw, self.customer, path)
    }

    // --- TheEye -----------------------------------------------------------

    /// Uploads a shell script running `body`; its id.
    pub async fn script(&self, name: &str, body: &str) -> anyhow::Result<String> {
        let script = json!({"name": name, "filename": format!("{name}.sh"),
                            "content": format!("#!/bin/sh\n{body}\n")});
        let made = expect(
            self.admin.post(self.url("/script")).json(&script),
            201,
            "script",
        );
        Ok(id(&made.await?))
    }

    /// Defines a task with `fields`; the definition as answered.
    pub async fn task(&self, fields: Value) -> anyhow::Result<Value> {
        expect(
            self.admin.post(self.url("/task")).json(&fields),
            201,
            "task",
        )
        .await
    }

    /// Runs `task` with `args`; the job as answered.
    pub async fn run(&self, task: &str, args: Value) -> anyhow::Result<Value> {
        let url = self.url(&format!("/task/{task}/job"));
        let body = json!({"task_arguments": args});
        expect(self.admin.post(url).json(&body), 201, "run").await
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/job/{id}"));
        Ok(self.admin.get(url).send().await?.json().await?)
    }

    /// Waits until the job reaches one of `statuses`; returns it.
    pub async fn job_until(
        &self,
        id: &str,
        statuses: &[&str],
        within: Duration,
    ) -> anyhow::Result<Value> {
        eventually(within, &format!("job {id} in {statuses:?}"), || async {
            let job = self.job(id).await?;
            let s = job["status"].as_str().unwrap_or_default().to_string();
            Ok(statuses.contains(&s.as_str()).then_some(job))
        })
        .await
    }

    /// The task's secret key.
    pub async fn secret(&self, task: &str) -> anyhow::Result<String> {
        let url = self.url(&format!("/task/{task}/credentials"));
        let v: Value = self.admin.get(url).send().await?.json().await?;
        Ok(v["secret"].as_str().unwrap_or_default().to_string())
    }

    // --- human tasks ------------------------------------------------------

    /// A field worker with a token of its own, made through the admin API.
    pub async fn worker(&self, email: &str) -> anyhow::Result<Worker> {
        self.worker_with(json!({ "email": email })).await
    }

    /// A field worker made from `body` (its e-mail, a phone).
    pub async fn worker_with(&self, body: Value) -> anyhow::Result<Worker> {
        let made = expect(
            self.admin.post(self.url("/workers")).json(&body),
            201,
            "worker",
        );
        let made = made.await?;
        Ok(Worker {
            email: body["email"].as_str().unwrap_or_default().to_string(),
            client: client_with(made["access_token"].as_str().unwrap_or_default()),
            gw: self.gw.clone(),
        })
    }

    /// Publishes a micro-task named PAT (a photo step and a text step)
    /// with `extra` fields.
    pub async fn publish(&self, extra: Value) -> anyhow::Result<Value> {
        let mut body = json!({
            "name": "PAT",
            "version": 1,
            "task_flow": [{"index": 1, "type": "photo"}, {"index": 2, "type": "text"}],
            "variables": {"produto": 47},
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        expect(
            self.admin.post(self.url("/micro_task")).json(&body),
            201,
            "publish",
        )
        .await
    }

    /// A micro-task as the admin sees it (executions, submissions,
    /// notifications).
    pub async fn view(&self, task: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/micro_task/{task}"));
        Ok(self
            .admin
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// A micro-task's history.
    pub async fn micro_task_events(&self, task: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/micro_task/{task}/events"));
        Ok(self.admin.get(url).send().await?.json().await?)
    }

    /// The task's view once a submission is recorded for it.
    pub async fn recorded(&self, task: &str, what: &str) -> anyhow::Result<Value> {
        self.view_until(task, what, |v| {
            v["submissions"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await
    }

    /// The task's view once its status is `want`.
    pub async fn wait_status(&self, task: &str, want: &str) -> anyhow::Result<Value> {
        let what = format!("micro-task {task} {want}");
        self.view_until(task, &what, |v| v["status"] == want).await
    }

    /// The task's view once `done` accepts it (within 30 s).
    pub async fn view_until(
        &self,
        task: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let done = &done;
        eventually(Duration::from_secs(30), what, || async move {
            let v = self.view(task).await?;
            Ok(done(&v).then_some(v))
        })
        .await
    }
}

/// A field worker: its e-mail and a client sending its token.
#[derive(Clone)]
pub struct Worker {
    pub email: String,
    pub client: reqwest::Client,
    pub gw: String,
}

impl Worker {
    /// `POST {gw}{path}` with no body.
    pub async fn post(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        answer(self.client.post(format!("{}{path}", self.gw))).await
    }

    pub async fn reserve(&self, task: &str) -> anyhow::Result<(u16, Value)> {
        self.post(&format!("/micro_task/{task}/reserve")).await
    }

    pub async fn start(&self, task: &str) -> anyhow::Result<(u16, Value)> {
        self.post(&format!("/micro_task/execution/{task}/start"))
            .await
    }

    /// Reserves and starts a micro-task; its execution's id.
    pub async fn take(&self, task: &str) -> anyhow::Result<String> {
        let (status, body) = self.reserve(task).await?;
        anyhow::ensure!(status == 200, "reserve {task}: {status} {body}");
        let (status, started) = self.start(task).await?;
        anyhow::ensure!(status == 200, "start {task}: {status} {started}");
        Ok(started["execution_id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Finishes `task` with `body`, naming itself as the sofier.
    pub async fn finish(&self, task: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.finish_as(task, &self.email, body).await
    }

    /// Finishes `task` with `body`, naming `sofier`.
    pub async fn finish_as(
        &self,
        task: &str,
        sofier: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!(
            "{}/micro_task/execution/{task}/finish?sofier={sofier}",
            self.gw
        );
        answer(self.client.post(url).json(body)).await
    }
}

/// Seed 000's finish body for this task and execution, its trailing commas
/// removed and its impossible `45:29` made a real time.
pub fn seed_finish(task: &str, execution: &str, who: &str) -> Value {
    json!({
        "task_id": task,
        "execution_id": execution,
        "task_info": {"name": "PAT", "version": 1},
        "location": {"lat": -23.5656565656, "lng": -43.9564157},
        "who": who,
        "nps_sofier": {"nps": 10, "comment": "Tudo lindo e maravilhoso!"},
        "when": {"start": "2019-08-13T20:15:00", "finish": "2019-08-13T21:29:00"},
        "execution": [{
            "context": "LUGAR:ERRADO:LEAD_ALELO",
            "index": 2,
            "previous": 1,
            "when": "2019-08-13T20:15:00",
            "response": "Exemplo"
        }]
    })
}

/// The outcomes of a task's submissions, in the order they were received.
pub fn outcomes(view: &Value) -> Vec<&str> {
    view["submissions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["outcome"].as_str().unwrap_or_default())
        .collect()
}

/// The statuses a history's STATUS_CHANGE events went to, in order.
pub fn statuses(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "STATUS_CHANGE")
        .map(|e| e["to_status"].as_str().unwrap_or_default().to_string())
        .collect()
}
