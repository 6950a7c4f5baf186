//! The inference core: load a model once, optimise it once, run it many times.
//!
//! - [`Model::load`] reads an `.onnx`, `.tflite` or `.nnef.tgz` file, translates it into a
//!   tract `TypedModel` (through [`tflite`] or [`onnx`] for what stock tract lacks), pins
//!   what the caller pins, optimises it and builds the execution plan. Loading runs under
//!   `catch_unwind`: a file that makes tract panic is an error, never a crash.
//! - A [`Session`] (in `session.rs`) owns one spawned tract state and is reused call after
//!   call. Stateful models (TFLite resource variables, ONNX state inputs bound by
//!   configuration) carry their state in the session; a fresh session starts from the
//!   model's initial state.
//!
//! Every stateful model is turned into a pure function at load:
//! `(inputs.., state..) -> (outputs.., state'..)`. The session feeds `state` and keeps
//! `state'`, so the same plan serves stateless and stateful models alike.

pub mod direct_conv;
pub mod fuse;
pub mod isolate;
pub mod kernels;
pub mod onnx;
mod session;
pub mod tflite;

pub use session::{inputs_fit, NodeTime, Session};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_core::internal::*;
use tract_linalg::multithread::Executor;

/// Largest model file the loader reads into memory.
pub const MAX_MODEL_BYTES: u64 = 512 * 1024 * 1024;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The model file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file extension names no format the agent runs.
    #[error("{0}: unknown model format (expected .onnx, .tflite or .nnef.tgz)")]
    UnknownFormat(String),
    /// The model needs operators the agent does not implement.
    #[error("unsupported model: missing operators: {}", .0.join(", "))]
    Unsupported(Vec<String>),
    /// The model file is malformed or inconsistent.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// tract panicked while loading; the agent caught it.
    #[error("model loader crashed (caught): {0}")]
    Panicked(String),
    /// The caller's inputs do not fit the model.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Running the model failed.
    #[error("inference failed: {0}")]
    Run(String),
}

fn invalid(e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(e.to_string())
}

fn invalid_chain(e: TractError) -> EngineError {
    EngineError::Invalid(format!("{e:#}"))
}

/// Model file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ONNX protobuf.
    Onnx,
    /// TFLite flatbuffer.
    Tflite,
    /// tract's NNEF archive.
    Nnef,
}

impl Format {
    /// Its lowercase name, as the configuration and the `model_info` metric spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Tflite => "tflite",
            Format::Nnef => "nnef",
        }
    }

    /// Picks the format from a file name.
    pub fn from_path(path: &Path) -> Result<Format, EngineError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".onnx") {
            Ok(Format::Onnx)
        } else if name.ends_with(".tflite") {
            Ok(Format::Tflite)
        } else if name.ends_with(".nnef.tgz") || name.ends_with(".nnef.tar") {
            Ok(Format::Nnef)
        } else {
            Err(EngineError::UnknownFormat(path.display().to_string()))
        }
    }
}

/// Tunables for loading a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Matmul threads per run; 1 is tract's single-threaded executor.
    pub threads: usize,
    /// Inputs fixed at load to a value (Silero's `sr`). They disappear from the signature,
    /// and control flow that depends only on them is resolved at load.
    pub pins: Vec<(String, Tensor)>,
    /// ONNX state bindings: `(input, output)` pairs whose output feeds the input of the
    /// next call in a session.
    pub state: Vec<(String, String)>,
    /// Concrete shapes for inputs whose declared shape is symbolic. Control flow that
    /// depends only on shapes is then resolved at load.
    pub shapes: Vec<(String, Vec<usize>)>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { threads: 1, pins: vec![], state: vec![], shapes: vec![] }
    }
}

/// One input or output of a model's public signature.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the model.
    pub name: String,
    /// Element type, as tract spells it (`F32`, `I8`, ...).
    pub dtype: String,
    /// Dimensions; symbolic ones keep their name.
    pub shape: Vec<String>,
    #[serde(skip, default = "unknown_fact")]
    pub(crate) fact: TypedFact,
}

/// The fact of a spec read back from JSON, which carries names only.
fn unknown_fact() -> TypedFact {
    f32::fact([0usize; 0])
}

impl TensorSpec {
    fn new(name: &str, fact: &TypedFact) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            dtype: format!("{:?}", fact.datum_type.unquantized()),
            shape: fact.shape.iter().map(|d| d.to_string()).collect(),
            fact: fact.clone(),
        }
    }

    /// The element type.
    pub fn datum_type(&self) -> DatumType {
        self.fact.datum_type
    }
}

/// A state slot: the plan input it feeds, the plan output it is taken from, and its value
/// in a fresh session.
#[derive(Debug, Clone)]
pub(crate) struct StateSlot {
    pub input: usize,
    pub output: usize,
    pub initial: Tensor,
}

/// What an importer hands back: the graph, the plan indices of the state inputs and
/// outputs it created, and their initial values.
pub(crate) struct Imported {
    pub model: TypedModel,
    pub states: Vec<StateSlot>,
}

/// A loaded, optimised model, ready to spawn sessions.
#[derive(Debug)]
pub struct Model {
    format: Format,
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Plan input index of each public input.
    input_slots: Vec<usize>,
    /// Plan output index of each public output.
    output_slots: Vec<usize>,
    states: Vec<StateSlot>,
    executor: Executor,
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, turning a panic into [`EngineError::Panicked`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(EngineError::Panicked(panic_message(p))))
}

/// Reads a whole model file, refusing anything over [`MAX_MODEL_BYTES`].
fn read_model_file(path: &Path) -> Result<Vec<u8>, EngineError> {
    let io = |source| EngineError::Io { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_MODEL_BYTES {
        return Err(invalid(format!(
            "{}: {} bytes is over the {MAX_MODEL_BYTES}-byte model limit",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(io)
}

impl Model {
    /// Loads a model file; the format comes from the extension.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Model, EngineError> {
        let format = Format::from_path(path)?;
        let bytes = read_model_file(path)?;
        let model = Model::import(format, &bytes, options);
        // After the file's bytes are gone too: one trim returns both.
        drop(bytes);
        crate::memory::release_free_memory();
        model
    }

    /// Loads a model from memory.
    pub fn load_bytes(format: Format, bytes: &[u8], options: &LoadOptions) -> Result<Model, EngineError> {
        Model::import(format, bytes, options).inspect(|_| crate::memory::release_free_memory())
    }

    /// Imports, optimises and plans a model, under `catch_unwind`.
    fn import(format: Format, bytes: &[u8], options: &LoadOptions) -> Result<Model, EngineError> {
        guarded(|| {
            let imported = match format {
                Format::Tflite => tflite::import(bytes, options)?,
                Format::Onnx => onnx::import(bytes, options)?,
                Format::Nnef => import_nnef(bytes, options)?,
            };
            Model::build(format, imported, options)
        })
    }

    fn build(format: Format, imported: Imported, options: &LoadOptions) -> Result<Model, EngineError> {
        let Imported { model, states } = imported;
        tracing::debug!(depthwise_kernel = kernels::depthwise_kernel().unwrap_or("tract's generic loop"), "optimising");
        let state_inputs: Vec<usize> = states.iter().map(|s| s.input).collect();
        let state_outputs: Vec<usize> = states.iter().map(|s| s.output).collect();
        let model = direct_conv::optimize(model).map_err(invalid_chain)?;
        let name_of = |outlet: OutletId| -> String {
            let node = &model.nodes()[outlet.node];
            if node.outputs.len() > 1 {
                format!("{}.{}", node.name, outlet.slot)
            } else {
                node.name.clone()
            }
        };
        let mut inputs = vec![];
        let mut input_slots = vec![];
        for (ix, outlet) in model.input_outlets().map_err(invalid_chain)?.iter().enumerate() {
            if !state_inputs.contains(&ix) {
                inputs.push(TensorSpec::new(&name_of(*outlet), model.outlet_fact(*outlet).map_err(invalid_chain)?));
                input_slots.push(ix);
            }
        }
        let mut outputs = vec![];
        let mut output_slots = vec![];
        for (ix, outlet) in model.output_outlets().map_err(invalid_chain)?.iter().enumerate() {
            if !state_outputs.contains(&ix) {
                let label = model.outlet_label(*outlet).map(|s| s.to_string()).unwrap_or_else(|| name_of(*outlet));
                outputs.push(TensorSpec::new(&label, model.outlet_fact(*outlet).map_err(invalid_chain)?));
                output_slots.push(ix);
            }
        }
        let plan = model.into_runnable().map_err(invalid_chain)?;
        let executor = if options.threads > 1 {
            Executor::multithread(options.threads)
        } else {
            // `Executor::multithread(1)` would fall through to every core; one thread is
            // tract's own single-threaded executor.
            Executor::SingleThread
        };
        Ok(Model { format, plan, inputs, outputs, input_slots, output_slots, states, executor })
    }

    /// The file format it came from.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Public inputs, in order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Public outputs, in order.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Whether sessions carry state from call to call.
    pub fn is_stateful(&self) -> bool {
        !self.states.is_empty()
    }

    /// Opens a session: one reusable tract state, starting from the initial model state.
    pub fn session(self: &Arc<Self>) -> Result<Session, EngineError> {
        Session::new(self)
    }
}

fn import_nnef(bytes: &[u8], options: &LoadOptions) -> Result<Imported, EngineError> {
    if !options.state.is_empty() || !options.pins.is_empty() {
        return Err(invalid("NNEF models take neither pins nor state bindings"));
    }
    let nnef = tract_nnef::nnef();
    let model = nnef.model_for_read(&mut std::io::Cursor::new(bytes)).map_err(invalid_chain)?;
    Ok(Imported { model, states: vec![] })
}

/// Binds ONNX-style explicit state: `(input name, output name)` pairs become state slots
/// starting from zeros. Symbolic dimensions of a state start at 1.
pub(crate) fn bind_state(model: &TypedModel, pairs: &[(String, String)]) -> Result<Vec<StateSlot>, EngineError> {
    let mut slots = vec![];
    for (input, output) in pairs {
        let in_ix = model
            .input_outlets()
            .map_err(invalid_chain)?
            .iter()
            .position(|o| model.node(o.node).name == *input)
            .ok_or_else(|| invalid(format!("state input {input:?} is not a model input")))?;
        let out_ix = model
            .output_outlets()
            .map_err(invalid_chain)?
            .iter()
            .position(|o| model.outlet_label(*o) == Some(output.as_str()) || model.node(o.node).name == *output)
            .ok_or_else(|| invalid(format!("state output {output:?} is not a model output")))?;
        let fact = model.input_fact(in_ix).map_err(invalid_chain)?;
        let shape: Vec<usize> = fact.shape.iter().map(|d| d.to_usize().unwrap_or(1)).collect();
        let initial = Tensor::zero_dt(fact.datum_type, &shape).map_err(invalid_chain)?;
        slots.push(StateSlot { input: in_ix, output: out_ix, initial });
    }
    Ok(slots)
}

/// Checks a file without keeping it: the format, the signature and the operator summary.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Inspection {
    /// File format.
    pub format: Format,
    /// Public inputs.
    pub inputs: Vec<TensorSpec>,
    /// Public outputs.
    pub outputs: Vec<TensorSpec>,
    /// Operator name and count, as the file names them.
    pub ops: Vec<(String, usize)>,
    /// Whether the agent can run it.
    pub supported: bool,
    /// Operators the agent lacks.
    pub missing_ops: Vec<String>,
    /// Why it cannot be loaded, when it cannot.
    pub error: Option<String>,
}

/// Inspects a model file: signature from the file itself, op summary, and whether it loads.
pub fn inspect(path: &Path, options: &LoadOptions) -> Result<Inspection, EngineError> {
    let format = Format::from_path(path)?;
    let bytes = read_model_file(path)?;
    let (ops, declared) = guarded(|| match format {
        Format::Tflite => tflite::summary(&bytes),
        Format::Onnx => onnx::summary(&bytes),
        Format::Nnef => Ok((vec![], None)),
    })?;
    match Model::load_bytes(format, &bytes, options) {
        Ok(model) => Ok(Inspection {
            format,
            inputs: model.inputs.clone(),
            outputs: model.outputs.clone(),
            ops,
            supported: true,
            missing_ops: vec![],
            error: None,
        }),
        Err(e) => {
            let (inputs, outputs) = declared.unwrap_or_default();
            let missing_ops = match &e {
                EngineError::Unsupported(ops) => ops.clone(),
                _ => vec![],
            };
            Ok(Inspection { format, inputs, outputs, ops, supported: false, missing_ops, error: Some(e.to_string()) })
        }
    }
}

/// The inputs a model file declares, before any loading: names and types for pins and
/// positional inputs.
pub fn declared_inputs(path: &Path) -> Result<Vec<TensorSpec>, EngineError> {
    let format = Format::from_path(path)?;
    let bytes = read_model_file(path)?;
    declared_inputs_of(format, &bytes)
}

/// [`declared_inputs`] of a model in memory.
pub fn declared_inputs_of(format: Format, bytes: &[u8]) -> Result<Vec<TensorSpec>, EngineError> {
    match format {
        Format::Tflite => Ok(guarded(|| tflite::summary(bytes))?.1.map(|d| d.0).unwrap_or_default()),
        Format::Onnx => Ok(guarded(|| onnx::summary(bytes))?.1.map(|d| d.0).unwrap_or_default()),
        Format::Nnef => {
            let model = Model::load_bytes(format, bytes, &LoadOptions::default())?;
            Ok(model.inputs.clone())
        }
    }
}

/// A pinned scalar in the type the model declares for that input.
pub fn scalar_pin(declared: &[TensorSpec], name: &str, value: f64) -> Result<Tensor, EngineError> {
    let spec = declared.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
        EngineError::BadInput(format!("pin {name}: no such input (inputs: {})", names.join(", ")))
    })?;
    let dt = datum_type_from_name(&spec.dtype)
        .ok_or_else(|| EngineError::BadInput(format!("pin {name}: input type {} unknown", spec.dtype)))?;
    Ok(Tensor::from(value).cast_to_dt(dt).map_err(|e| EngineError::BadInput(format!("pin {name}: {e}")))?.into_owned())
}

/// The element type a [`TensorSpec`] names.
pub fn datum_type_from_name(name: &str) -> Option<DatumType> {
    Some(match name {
        "F16" => DatumType::F16,
        "F32" => DatumType::F32,
        "F64" => DatumType::F64,
        "I8" => DatumType::I8,
        "U8" => DatumType::U8,
        "I16" => DatumType::I16,
        "U16" => DatumType::U16,
        "I32" => DatumType::I32,
        "U32" => DatumType::U32,
        "I64" => DatumType::I64,
        "U64" => DatumType::U64,
        "Bool" => DatumType::Bool,
        _ => return None,
    })
}

/// Load options for a model that arrived over the air: its manifest's pins, in the types
/// the model declares.
pub fn options_for_bytes(format: Format, bytes: &[u8], pins: &[(String, f64)]) -> Result<LoadOptions, EngineError> {
    let declared = if pins.is_empty() { vec![] } else { declared_inputs_of(format, bytes)? };
    let pins = pins
        .iter()
        .map(|(name, v)| Ok((name.clone(), scalar_pin(&declared, name, *v)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(LoadOptions { pins, ..LoadOptions::default() })
}
