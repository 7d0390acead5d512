//! One engine thread per model. The scheduler is async but owns no threads and is not `Send`,
//! so the backend, the model and the scheduler are all created on the thread that drives them
//! (`pollster::block_on(step())`). HTTP handlers talk to it through a command channel and get
//! their request's events on a channel of their own: the thread blocks on commands when it has
//! no work, and takes every queued command between steps when it has.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use tandem_core::generate::GenerateParams;
use tandem_core::lora::Adapter;
use tandem_core::model::Model;
use tandem_core::scheduler::{Event, RequestId, Scheduler, SchedulerConfig, Speculation};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, ModelConfig, Result};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::logprobs::TokenNames;
use crate::metrics::{finish_reason, EngineGauges, ModelMetrics};

pub(crate) enum Command {
    Submit(Submission),
    /// Ends these requests (a client went away): the same path as any stop.
    Abort(Vec<RequestId>),
    /// Admit nothing new; exit once the running requests are done.
    Drain,
    /// Abort everything and exit.
    Stop,
    /// Registers a LoRA adapter under a name; the reply says whether it was taken.
    LoadAdapter {
        name: String,
        adapter: Arc<Adapter>,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
    /// Unregisters one; the reply comes once its queued and running requests have ended.
    UnloadAdapter {
        name: String,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
}

/// One HTTP request's choices (prompts x n), admitted all or none.
pub(crate) struct Submission {
    pub choices: Vec<(Vec<u32>, GenerateParams)>,
    pub replies: tmpsc::UnboundedSender<Reply>,
}

/// What the engine sends back on a submission's channel: first `Accepted` (request ids in
/// choice order) or `Rejected`, then each choice's events.
pub(crate) enum Reply {
    Accepted(Vec<RequestId>),
    Rejected(Reject),
    Event { choice: usize, event: Event },
}

pub(crate) enum Reject {
    /// The scheduler refused it (too long, bad parameters): the client's fault.
    Invalid(tandem_core::Error),
    QueueFull {
        limit: usize,
    },
    ShuttingDown,
}

/// What the HTTP side knows of a loaded model.
pub struct Ready {
    pub tokenizer: Arc<Tokenizer>,
    /// Longest context one sequence may reach.
    pub context: usize,
    /// Tokens the whole KV pool holds: no request may need more.
    pub pool_tokens: usize,
    pub vocab: usize,
    /// Unix seconds when it finished loading (`/v1/models`' `created`).
    pub created: u64,
    /// Spells tokens for log-probabilities.
    pub names: Arc<TokenNames>,
    /// What adapters loaded at run time are checked against (`None` in the request fuzzer,
    /// which has no model).
    pub config: Option<ModelConfig>,
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<Ready>),
    Failed(String),
}

/// A model as the HTTP side sees it: its name, state and command channel.
pub struct ModelHandle {
    pub name: String,
    commands: mpsc::Sender<Command>,
    pub(crate) state: watch::Sender<ModelState>,
    /// The LoRA adapters requests may name, as the engine last reported them (those being
    /// unloaded are gone from here at once).
    adapters: std::sync::RwLock<Vec<String>>,
}

impl ModelHandle {
    pub(crate) fn send(&self, c: Command) -> bool {
        self.commands.send(c).is_ok()
    }

    pub fn state(&self) -> ModelState {
        self.state.borrow().clone()
    }

    /// The names of the LoRA adapters it serves.
    pub fn adapters(&self) -> Vec<String> {
        self.adapters.read().map(|a| a.clone()).unwrap_or_default()
    }

    fn set_adapters(&self, names: Vec<String>) {
        if let Ok(mut a) = self.adapters.write() {
            *a = names;
        }
    }
}

/// The engine end of one model: hand it to the thread that loads the model, which then calls
/// [`EngineSeat::serve`] (or [`EngineSeat::fail`] if loading failed).
pub struct EngineSeat {
    handle: Arc<ModelHandle>,
    commands: mpsc::Receiver<Command>,
    metrics: ModelMetrics,
    max_waiting: usize,
}

pub(crate) fn seat(
    name: String,
    metrics: ModelMetrics,
    max_waiting: usize,
) -> (Arc<ModelHandle>, EngineSeat) {
    let (tx, rx) = mpsc::channel();
    let (state, _) = watch::channel(ModelState::Loading);
    let handle = Arc::new(ModelHandle { name, commands: tx, state, adapters: Default::default() });
    (handle.clone(), EngineSeat { handle, commands: rx, metrics, max_waiting })
}

impl EngineSeat {
    pub fn model_name(&self) -> &str {
        &self.handle.name
    }

    /// Marks the model as failed to load; the server then shuts down with this reason.
    pub fn fail(&self, reason: String) {
        self.handle.state.send_replace(ModelState::Failed(reason));
    }

    /// Serves requests on this thread until the server stops (or drains and is done).
    pub fn serve<B: Backend>(
        &self,
        model: Model<B>,
        tokenizer: Tokenizer,
        config: SchedulerConfig,
    ) -> Result<()> {
        self.serve_speculative(model, tokenizer, config, None)
    }

    /// [`EngineSeat::serve_speculative`] with LoRA adapters requests may name as their model
    /// (the model's adapter pools enabled, [`Model::enable_lora`]).
    pub fn serve_adapters<B: Backend>(
        &self,
        model: Model<B>,
        tokenizer: Tokenizer,
        config: SchedulerConfig,
        spec: Option<Speculation<B>>,
        adapters: Vec<(String, Arc<Adapter>)>,
    ) -> Result<()> {
        self.serve_all(model, tokenizer, config, spec, adapters)
    }

    /// [`EngineSeat::serve`] with speculative decoding for every request (see
    /// [`Speculation`]): the same tokens, fewer target steps.
    pub fn serve_speculative<B: Backend>(
        &self,
        model: Model<B>,
        tokenizer: Tokenizer,
        config: SchedulerConfig,
        spec: Option<Speculation<B>>,
    ) -> Result<()> {
        self.serve_all(model, tokenizer, config, spec, vec![])
    }

    fn serve_all<B: Backend>(
        &self,
        model: Model<B>,
        tokenizer: Tokenizer,
        config: SchedulerConfig,
        spec: Option<Speculation<B>>,
        adapters: Vec<(String, Arc<Adapter>)>,
    ) -> Result<()> {
        let tokenizer = Arc::new(tokenizer);
        let ready = Ready {
            tokenizer: tokenizer.clone(),
            context: model.context(),
            pool_tokens: model.kv.capacity(),
            vocab: model.config.vocab_size,
            created: unix_now(),
            names: Arc::new(TokenNames::new(tokenizer.clone())),
            config: Some(model.config.clone()),
        };
        let sched = match Scheduler::new(model, tokenizer, config)
            .and_then(|mut s| s.set_speculation(spec).map(|_| s))
            .and_then(|mut s| {
                for (name, a) in adapters {
                    s.add_adapter(&name, a)?;
                }
                Ok(s)
            }) {
            Ok(s) => s,
            Err(e) => {
                self.fail(e.to_string());
                return Err(e);
            }
        };
        let mut engine = Engine {
            sched,
            tracked: HashMap::new(),
            draining: false,
            metrics: &self.metrics,
            max_waiting: self.max_waiting,
            last: Default::default(),
            handle: &self.handle,
            unloads: vec![],
        };
        engine.publish_adapters();
        engine.update_gauges();
        self.handle.state.send_replace(ModelState::Ready(Arc::new(ready)));
        loop {
            if !engine.sched.has_work() {
                if engine.draining {
                    break;
                }
                // Idle: sleep until a command comes; every sender gone means the server is.
                match self.commands.recv() {
                    Ok(c) => engine.command(c),
                    Err(_) => break,
                }
            }
            while let Ok(c) = self.commands.try_recv() {
                engine.command(c);
            }
            let events = pollster::block_on(engine.sched.step());
            // Gauges first: a client that has read its request's end then finds the request's
            // blocks returned in /metrics. Blocks freed by aborts in `route` show after the
            // next step, which their `Interrupted` events bring at once.
            engine.update_gauges();
            engine.route(events);
            engine.settle_unloads();
        }
        Ok(())
    }
}

/// A request the engine is running for someone.
struct Tracked {
    choice: usize,
    /// Its LoRA adapter, and the tokens generated so far (per-adapter metrics).
    adapter: Option<String>,
    tokens: usize,
    replies: tmpsc::UnboundedSender<Reply>,
    submitted: Instant,
    last_token: Option<Instant>,
}

struct Engine<'a, B: Backend> {
    sched: Scheduler<B>,
    tracked: HashMap<RequestId, Tracked>,
    draining: bool,
    metrics: &'a ModelMetrics,
    max_waiting: usize,
    /// Scheduler counters already reported.
    last: tandem_core::scheduler::SchedulerStats,
    handle: &'a ModelHandle,
    /// Unloads waiting for their adapter's requests to end.
    unloads: Vec<(String, oneshot::Sender<std::result::Result<(), String>>)>,
}

impl<B: Backend> Engine<'_, B> {
    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(s) => self.submit(s),
            Command::Abort(ids) => {
                for id in ids {
                    self.sched.abort(id);
                }
            }
            Command::Drain => self.draining = true,
            Command::LoadAdapter { name, adapter, reply } => {
                let r = self.sched.add_adapter(&name, adapter).map_err(|e| e.to_string());
                self.publish_adapters();
                let _ = reply.send(r);
            }
            Command::UnloadAdapter { name, reply } => {
                match self.sched.remove_adapter(&name) {
                    Ok(()) => self.unloads.push((name, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
                self.publish_adapters();
                self.settle_unloads();
            }
            Command::Stop => {
                self.draining = true;
                let ids: Vec<RequestId> = self.tracked.keys().copied().collect();
                for id in ids {
                    self.sched.abort(id);
                }
            }
        }
    }

    fn submit(&mut self, s: Submission) {
        let reject = |r| {
            let _ = s.replies.send(Reply::Rejected(r));
        };
        if self.draining {
            return reject(Reject::ShuttingDown);
        }
        if self.sched.waiting() + s.choices.len() > self.max_waiting {
            return reject(Reject::QueueFull { limit: self.max_waiting });
        }
        let mut ids = Vec::with_capacity(s.choices.len());
        let adapters: Vec<Option<String>> =
            s.choices.iter().map(|(_, p)| p.adapter.clone()).collect();
        for (prompt, params) in s.choices {
            match self.sched.add(prompt, params) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // All or none: the choices added so far end untracked, so unreported.
                    for id in ids {
                        self.sched.abort(id);
                    }
                    return reject(Reject::Invalid(e));
                }
            }
        }
        if s.replies.send(Reply::Accepted(ids.clone())).is_err() {
            // The client left while the command was queued.
            for id in ids {
                self.sched.abort(id);
            }
            return;
        }
        let now = Instant::now();
        for ((choice, id), adapter) in ids.into_iter().enumerate().zip(adapters) {
            let replies = s.replies.clone();
            let t =
                Tracked { choice, adapter, tokens: 0, replies, submitted: now, last_token: None };
            self.tracked.insert(id, t);
        }
    }

    fn route(&mut self, events: Vec<(RequestId, Event)>) {
        for (id, event) in events {
            let (reason, usage) = match &event {
                Event::Token { .. } => {
                    self.metrics.generated_tokens.inc();
                    if let Some(t) = self.tracked.get_mut(&id) {
                        t.tokens += 1;
                        let now = Instant::now();
                        if let Some(last) = t.last_token.replace(now) {
                            self.metrics.itl.observe(now.duration_since(last).as_secs_f64());
                        }
                    }
                    (None, None)
                }
                Event::Finished { reason, usage, .. } => {
                    (Some(finish_reason(*reason)), Some(usage.clone()))
                }
                Event::Failed(_) => (Some("error"), None),
            };
            let Some(t) = self.tracked.get(&id) else { continue };
            if let Some(reason) = reason {
                // Counted before the client hears of it, so a /metrics read after the
                // response already shows the request finished.
                self.metrics.finished(reason, usage.as_ref(), t.submitted.elapsed().as_secs_f64());
                if let Some(a) = &t.adapter {
                    self.metrics.adapter_finished(a, t.tokens);
                }
            }
            let delivered = t.replies.send(Reply::Event { choice: t.choice, event }).is_ok();
            if reason.is_some() {
                self.tracked.remove(&id);
            } else if !delivered {
                // Nobody listens any more: stop spending steps on it.
                self.sched.abort(id);
            }
        }
    }

    /// Tells the HTTP side which adapters requests may name now.
    fn publish_adapters(&self) {
        let names = self.sched.adapters().into_iter().filter(|a| !a.removing).map(|a| a.name);
        self.handle.set_adapters(names.collect());
    }

    /// Answers the unloads whose adapter is gone.
    fn settle_unloads(&mut self) {
        if self.unloads.is_empty() {
            return;
        }
        let present: Vec<String> = self.sched.adapters().into_iter().map(|a| a.name).collect();
        for (name, reply) in std::mem::take(&mut self.unloads) {
            if present.contains(&name) {
                self.unloads.push((name, reply));
            } else {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn update_gauges(&mut self) {
        let kv = self.sched.kv_blocks();
        self.metrics.set_gauges(&EngineGauges {
            running: self.sched.running(),
            waiting: self.sched.waiting(),
            total_blocks: kv.total_blocks(),
            free_blocks: kv.free_blocks(),
            cached_blocks: kv.cached_blocks(),
        });
        let s = self.sched.stats;
        self.metrics.preemptions.inc_by(s.preemptions - self.last.preemptions);
        self.metrics.prefix_hits.inc_by(s.cached_prompt_tokens - self.last.cached_prompt_tokens);
        self.last = s;
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
