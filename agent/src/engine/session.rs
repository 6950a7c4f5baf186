//! A [`Session`]: one caller's use of a [`Model`], a spawned tract state reused call after
//! call plus the model state carried between calls; and [`Session::profile`], the per-node
//! timing behind `infer --profile`. Kept apart from loading: a model is loaded and optimised
//! once, sessions run it many times.

use std::sync::Arc;

use tract_core::internal::*;

use super::{guarded, EngineError, Model, TensorSpec};

/// Time spent in one plan node over a profile.
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// Node name.
    pub node: String,
    /// Operator name.
    pub op: String,
    /// What the operator says of itself (tract's `Op::info`: kernel, geometry).
    pub info: Vec<String>,
    /// Total time over all runs.
    pub total: std::time::Duration,
}

/// One caller's use of a model: a spawned tract state reused across calls, plus the model
/// state carried between calls.
pub struct Session {
    model: Arc<Model>,
    state: TypedSimpleState,
    carried: Vec<TValue>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("states", &self.carried.len()).finish()
    }
}

/// Whether `inputs` fit a model whose inputs are `specs` (count, element types, shapes).
pub fn inputs_fit(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), EngineError> {
    if inputs.len() != specs.len() {
        return Err(EngineError::BadInput(format!("expected {} inputs, got {}", specs.len(), inputs.len())));
    }
    specs.iter().zip(inputs).try_for_each(|(spec, t)| check_input(spec, t))
}

fn check_input(spec: &TensorSpec, t: &Tensor) -> Result<(), EngineError> {
    let want = spec.fact.datum_type.unquantized();
    if t.datum_type().unquantized() != want {
        return Err(EngineError::BadInput(format!(
            "input {:?}: expected {:?}, got {:?}",
            spec.name,
            want,
            t.datum_type()
        )));
    }
    let shape_ok = spec.fact.shape.len() == t.rank()
        && spec.fact.shape.iter().zip(t.shape()).all(|(d, n)| d.to_usize().map(|d| d == *n).unwrap_or(true));
    if !shape_ok {
        return Err(EngineError::BadInput(format!(
            "input {:?}: expected shape [{}], got {:?}",
            spec.name,
            spec.shape.join(","),
            t.shape()
        )));
    }
    Ok(())
}

impl Session {
    /// A session on `model`, starting from its initial state.
    pub(super) fn new(model: &Arc<Model>) -> Result<Session, EngineError> {
        let state = model.plan.spawn().map_err(|e| EngineError::Run(format!("{e:#}")))?;
        Ok(Session {
            model: model.clone(),
            state,
            carried: model.states.iter().map(|s| s.initial.clone().into_tvalue()).collect(),
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The plan's inputs for one step: the caller's, checked, then the carried state.
    fn feed(&self, inputs: Vec<Tensor>) -> Result<TVec<TValue>, EngineError> {
        let model = &self.model;
        if inputs.len() != model.inputs.len() {
            return Err(EngineError::BadInput(format!(
                "expected {} inputs ({}), got {}",
                model.inputs.len(),
                model.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                inputs.len()
            )));
        }
        let mut feed: Vec<Option<TValue>> = vec![None; model.input_slots.len() + model.states.len()];
        for ((spec, slot), t) in model.inputs.iter().zip(&model.input_slots).zip(inputs) {
            check_input(spec, &t)?;
            feed[*slot] = Some(t.into_tvalue());
        }
        for (slot, value) in model.states.iter().zip(&self.carried) {
            // A shared handle, not a copy: the plan only reads its inputs.
            feed[slot.input] = Some(value.clone());
        }
        Ok(feed.into_iter().map(|v| v.expect("every plan input is fed")).collect())
    }

    /// Runs one step: public inputs in, public outputs out. State moves forward.
    pub fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let feed = self.feed(inputs)?;
        let model = self.model.clone();
        let state = &mut self.state;
        let outputs = guarded(|| {
            tract_linalg::multithread::multithread_tract_scope(model.executor.clone(), || {
                state.run(feed).map_err(|e| EngineError::Run(format!("{e:#}")))
            })
        })?;
        for (ix, slot) in model.states.iter().enumerate() {
            self.carried[ix] = outputs[slot.output].clone();
        }
        let mut outputs: Vec<Option<TValue>> = outputs.into_iter().map(Some).collect();
        Ok(model
            .output_slots
            .iter()
            .map(|ix| outputs[*ix].take().expect("distinct output slots").into_tensor())
            .collect())
    }

    /// Runs `runs` steps on the same inputs and returns the time spent in each plan node,
    /// slowest first: where the time goes, for tuning.
    pub fn profile(&mut self, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<NodeTime>, EngineError> {
        let feed = self.feed(inputs)?;
        let mut times: Vec<Option<NodeTime>> = vec![];
        for _ in 0..runs {
            self.state
                .run_plan_with_eval(feed.clone(), |ctx, op_state, node, inputs| {
                    let start = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, inputs);
                    if times.len() <= node.id {
                        times.resize(node.id + 1, None);
                    }
                    let entry = times[node.id].get_or_insert_with(|| NodeTime {
                        node: node.name.clone(),
                        op: node.op.name().to_string(),
                        info: node.op.info().unwrap_or_default(),
                        total: std::time::Duration::ZERO,
                    });
                    entry.total += start.elapsed();
                    out
                })
                .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        }
        let mut times: Vec<NodeTime> = times.into_iter().flatten().collect();
        times.sort_by_key(|t| std::cmp::Reverse(t.total));
        Ok(times)
    }

    /// Puts the state back where a fresh session starts.
    pub fn reset(&mut self) {
        self.carried = self.model.states.iter().map(|s| s.initial.clone().into_tvalue()).collect();
    }
}
