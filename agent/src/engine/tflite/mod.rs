//! The project's own TFLite importer, onto tract-core ops.
//!
//! tract-tflite's op registry is private and misses operators that real models use
//! (DEQUANTIZE of fp16 weights, DENSIFY, PRELU, SPLIT_V, resource variables, IF, MediaPipe's
//! transposed convolution...), so this module reads the flatbuffer through tract-tflite's
//! public accessors and builds a `TypedModel` itself, operator by operator:
//!
//! - [`tensors`]: tensor descriptions, constants (size-checked before allocation), per-axis
//!   dequantisation and DENSIFY of sparse constants;
//! - `ops`: one translator per operator;
//! - [`qops`]: quantised graphs run in real f32 with explicit requantisation;
//! - [`pool`]: global average pooling with an f64 accumulator;
//! - [`channel`]: one-pass per-channel element-wise ops (PRELU, squeeze-and-excitation).
//!
//! Resource variables become explicit state: a READ before any ASSIGN in the main subgraph
//! adds a state input, the variable's final value becomes a state output, and the
//! CALL_ONCE initialisation subgraph is evaluated once at load for the initial values.
//! IF with a condition known at load is inlined; otherwise it becomes tract's `IfThenElse`.
//!
//! Before building anything, every reachable subgraph is scanned, and a model that needs
//! operators not implemented here is refused with all of their names.

pub mod channel;
#[cfg(test)]
mod op_tests;
mod ops;
pub mod pool;
pub mod qops;
pub mod tensors;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tract_core::internal::*;
use tract_tflite::tflite::{self as tfl, BuiltinOperator};

use super::{EngineError, Imported, LoadOptions, StateSlot, TensorSpec};
use tensors::TensorInfo;

/// An operator code, resolved the way the TFLite runtime does it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OpCode {
    Builtin(BuiltinOperator),
    Custom(String),
}

impl OpCode {
    pub fn name(&self) -> String {
        match self {
            OpCode::Builtin(b) => b.variant_name().map(|s| s.to_string()).unwrap_or_else(|| format!("BUILTIN_{}", b.0)),
            OpCode::Custom(c) => format!("CUSTOM:{c}"),
        }
    }
}

/// Builtins the importer translates.
const SUPPORTED: &[BuiltinOperator] = &[
    BuiltinOperator::ABS,
    BuiltinOperator::ADD,
    BuiltinOperator::ARG_MAX,
    BuiltinOperator::ARG_MIN,
    BuiltinOperator::ASSIGN_VARIABLE,
    BuiltinOperator::AVERAGE_POOL_2D,
    BuiltinOperator::BATCH_MATMUL,
    BuiltinOperator::CALL_ONCE,
    BuiltinOperator::CAST,
    BuiltinOperator::CEIL,
    BuiltinOperator::CONCATENATION,
    BuiltinOperator::CONV_2D,
    BuiltinOperator::COS,
    BuiltinOperator::DENSIFY,
    BuiltinOperator::DEPTH_TO_SPACE,
    BuiltinOperator::DEPTHWISE_CONV_2D,
    BuiltinOperator::DEQUANTIZE,
    BuiltinOperator::DIV,
    BuiltinOperator::EXP,
    BuiltinOperator::EXPAND_DIMS,
    BuiltinOperator::FLOOR,
    BuiltinOperator::FULLY_CONNECTED,
    BuiltinOperator::GATHER,
    BuiltinOperator::HARD_SWISH,
    BuiltinOperator::IF,
    BuiltinOperator::LEAKY_RELU,
    BuiltinOperator::LOG,
    BuiltinOperator::LOGISTIC,
    BuiltinOperator::MAX_POOL_2D,
    BuiltinOperator::MAXIMUM,
    BuiltinOperator::MEAN,
    BuiltinOperator::MINIMUM,
    BuiltinOperator::MIRROR_PAD,
    BuiltinOperator::MUL,
    BuiltinOperator::NEG,
    BuiltinOperator::PAD,
    BuiltinOperator::PADV2,
    BuiltinOperator::POW,
    BuiltinOperator::PRELU,
    BuiltinOperator::QUANTIZE,
    BuiltinOperator::READ_VARIABLE,
    BuiltinOperator::REDUCE_MAX,
    BuiltinOperator::REDUCE_MIN,
    BuiltinOperator::REDUCE_PROD,
    BuiltinOperator::RELU,
    BuiltinOperator::RELU6,
    BuiltinOperator::RELU_N1_TO_1,
    BuiltinOperator::RESHAPE,
    BuiltinOperator::RESIZE_BILINEAR,
    BuiltinOperator::RESIZE_NEAREST_NEIGHBOR,
    BuiltinOperator::RSQRT,
    BuiltinOperator::SIN,
    BuiltinOperator::SLICE,
    BuiltinOperator::SOFTMAX,
    BuiltinOperator::SPACE_TO_DEPTH,
    BuiltinOperator::SPLIT,
    BuiltinOperator::SPLIT_V,
    BuiltinOperator::SQRT,
    BuiltinOperator::SQUARE,
    BuiltinOperator::SQUARED_DIFFERENCE,
    BuiltinOperator::SQUEEZE,
    BuiltinOperator::STRIDED_SLICE,
    BuiltinOperator::SUB,
    BuiltinOperator::SUM,
    BuiltinOperator::TANH,
    BuiltinOperator::TRANSPOSE,
    BuiltinOperator::TRANSPOSE_CONV,
    BuiltinOperator::VAR_HANDLE,
];

/// Custom operators the importer translates.
const SUPPORTED_CUSTOM: &[&str] = &["Convolution2DTransposeBias"];

impl OpCode {
    fn supported(&self) -> bool {
        match self {
            OpCode::Builtin(b) => SUPPORTED.contains(b),
            OpCode::Custom(c) => SUPPORTED_CUSTOM.contains(&c.as_str()),
        }
    }
}

/// A verified flatbuffer and its resolved operator codes.
pub(crate) struct File<'m> {
    pub root: tfl::Model<'m>,
    pub opcodes: Vec<OpCode>,
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

impl<'m> File<'m> {
    fn open(bytes: &'m [u8]) -> Result<File<'m>, EngineError> {
        if bytes.len() < 8 {
            return Err(invalid(format!("not a TFLite model: {} bytes", bytes.len())));
        }
        if &bytes[4..8] != b"TFL3" {
            return Err(invalid("not a TFLite model: missing TFL3 identifier"));
        }
        let root = tfl::root_as_model(bytes).map_err(|e| invalid(format!("corrupt TFLite flatbuffer: {e}")))?;
        let opcodes = root
            .operator_codes()
            .map(|codes| {
                codes
                    .iter()
                    .map(|oc| {
                        // The runtime takes the larger of the two fields: old files fill only
                        // the deprecated byte, new ones both.
                        let code = BuiltinOperator((oc.deprecated_builtin_code() as i32).max(oc.builtin_code().0));
                        if code == BuiltinOperator::CUSTOM {
                            OpCode::Custom(oc.custom_code().unwrap_or("<unnamed>").to_string())
                        } else {
                            OpCode::Builtin(code)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(File { root, opcodes })
    }

    fn subgraph(&self, ix: usize) -> Result<tfl::SubGraph<'m>, EngineError> {
        let sgs = self.root.subgraphs().ok_or_else(|| invalid("model has no subgraphs"))?;
        if ix >= sgs.len() {
            return Err(invalid(format!("subgraph {ix} out of range ({} subgraphs)", sgs.len())));
        }
        Ok(sgs.get(ix))
    }

    fn opcode(&self, op: &tfl::Operator) -> Result<&OpCode, EngineError> {
        self.opcodes
            .get(op.opcode_index() as usize)
            .ok_or_else(|| invalid(format!("operator code {} out of range", op.opcode_index())))
    }

    /// Subgraphs an operator calls into.
    fn callees(&self, op: &tfl::Operator) -> Vec<usize> {
        let mut v = vec![];
        if let Some(o) = op.builtin_options_as_if_options() {
            v.push(o.then_subgraph_index().max(0) as usize);
            v.push(o.else_subgraph_index().max(0) as usize);
        }
        if let Some(o) = op.builtin_options_as_call_once_options() {
            v.push(o.init_subgraph_index().max(0) as usize);
        }
        v
    }

    /// Operator names and counts over the subgraphs reachable from the main one.
    fn census(&self) -> Result<BTreeMap<String, (usize, bool)>, EngineError> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![0usize];
        let mut counts: BTreeMap<String, (usize, bool)> = BTreeMap::new();
        while let Some(ix) = todo.pop() {
            if !seen.insert(ix) {
                continue;
            }
            let sg = self.subgraph(ix)?;
            for op in sg.operators().iter().flatten() {
                let code = self.opcode(&op)?;
                let entry = counts.entry(code.name()).or_insert((0, code.supported()));
                entry.0 += 1;
                todo.extend(self.callees(&op));
            }
        }
        Ok(counts)
    }
}

/// Operator summary and the declared signature, straight from the file.
pub(crate) type Summary = (Vec<(String, usize)>, Option<(Vec<TensorSpec>, Vec<TensorSpec>)>);

pub(crate) fn summary(bytes: &[u8]) -> Result<Summary, EngineError> {
    let file = File::open(bytes)?;
    let ops = file.census()?.into_iter().map(|(k, (n, _))| (k, n)).collect();
    let main = file.subgraph(0)?;
    let spec = |ix: i32| -> Result<TensorSpec, EngineError> {
        let info = tensors::tensor_info(&main, ix)?;
        Ok(TensorSpec {
            name: info.name.clone(),
            dtype: format!("{:?}", info.dt),
            shape: info.signature.iter().map(|d| d.map(|d| d.to_string()).unwrap_or_else(|| "?".into())).collect(),
            fact: info.dt.fact(info.shape.clone()),
        })
    };
    let inputs = main.inputs().iter().flatten().map(spec).collect::<Result<Vec<_>, _>>()?;
    let outputs = main.outputs().iter().flatten().map(spec).collect::<Result<Vec<_>, _>>()?;
    Ok((ops, Some((inputs, outputs))))
}

/// One resource variable, keyed by `container/shared_name`.
#[derive(Debug)]
struct VarSlot {
    key: String,
    /// The state input, created when the variable is read before being assigned.
    source: Option<OutletId>,
    /// The latest assigned value.
    current: Option<OutletId>,
}

#[derive(Debug, Default)]
pub(crate) struct Vars {
    slots: Vec<VarSlot>,
}

impl Vars {
    fn slot(&mut self, key: &str) -> &mut VarSlot {
        if let Some(i) = self.slots.iter().position(|s| s.key == key) {
            &mut self.slots[i]
        } else {
            self.slots.push(VarSlot { key: key.to_string(), source: None, current: None });
            self.slots.last_mut().unwrap()
        }
    }
}

/// One subgraph being translated into `target`.
pub(crate) struct Graph<'a, 'm> {
    pub file: &'a File<'m>,
    pub sg: tfl::SubGraph<'m>,
    pub target: &'a mut TypedModel,
    pub vars: &'a mut Vars,
    pub values: HashMap<i32, OutletId>,
    pub handles: HashMap<i32, String>,
    pub scope: String,
    pub depth: usize,
}

const MAX_NESTING: usize = 16;

impl<'a, 'm> Graph<'a, 'm> {
    pub fn info(&self, ix: i32) -> TractResult<TensorInfo> {
        Ok(tensors::tensor_info(&self.sg, ix)?)
    }

    /// A unique node name under this graph's scope.
    pub fn name(&self, base: &str) -> String {
        self.target.unique_name(format!("{}{}", self.scope, base)).to_string()
    }

    /// The graph value of a tensor: computed earlier, or a constant from the file
    /// (densified, and dequantised to reals when quantised).
    pub fn value(&mut self, ix: i32) -> TractResult<OutletId> {
        if let Some(o) = self.values.get(&ix) {
            return Ok(*o);
        }
        let info = self.info(ix)?;
        let Some(t) = tensors::constant(&self.file.root, &self.sg, ix)? else {
            bail!("tensor {:?} is neither computed nor constant", info.name)
        };
        let t = if info.is_quantized() { tensors::dequantize_constant(&info, &t)? } else { t };
        let name = self.name(&info.name);
        let o = self.target.add_const(name, t)?;
        self.values.insert(ix, o);
        Ok(o)
    }

    /// A constant value, for operator parameters that must be known at load.
    pub fn konst(&mut self, ix: i32, what: &str) -> TractResult<Arc<Tensor>> {
        let o = self.value(ix)?;
        self.target.outlet_fact(o)?.konst.clone().with_context(|| format!("{what} must be a constant"))
    }

    pub fn wire(
        &mut self,
        base: &str,
        op: impl Into<Box<dyn TypedOp>>,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let name = self.name(base);
        self.target.wire_node(name, op, inputs)
    }

    /// Translates every operator of the subgraph, in file order.
    pub fn run(&mut self) -> TractResult<()> {
        let Some(operators) = self.sg.operators() else { return Ok(()) };
        for (i, op) in operators.iter().enumerate() {
            let code = self.file.opcode(&op)?.clone();
            let inputs: Vec<i32> = op.inputs().map(|v| v.iter().collect()).unwrap_or_default();
            let outputs: Vec<i32> = op.outputs().map(|v| v.iter().collect()).unwrap_or_default();
            let label = match outputs.first() {
                Some(o) => self.info(*o).map(|i| i.name).unwrap_or_default(),
                None => String::new(),
            };
            let node = ops::Node { code: code.clone(), flat: op, inputs, outputs, label: label.clone() };
            self.translate(&node).with_context(|| format!("operator #{i} {} (output {label:?})", code.name()))?;
        }
        Ok(())
    }

    /// Imports another subgraph inline, with its inputs bound to `args`.
    pub fn inline(&mut self, sg_ix: usize, args: &[OutletId]) -> TractResult<TVec<OutletId>> {
        ensure!(self.depth < MAX_NESTING, "subgraphs nested deeper than {MAX_NESTING}");
        let sg = self.file.subgraph(sg_ix)?;
        let ins: Vec<i32> = sg.inputs().map(|v| v.iter().collect()).unwrap_or_default();
        ensure!(ins.len() == args.len(), "subgraph {sg_ix} takes {} inputs, got {}", ins.len(), args.len());
        let scope = format!("{}sg{sg_ix}.", self.scope);
        let mut sub = Graph {
            file: self.file,
            sg,
            target: &mut *self.target,
            vars: &mut *self.vars,
            values: ins.iter().copied().zip(args.iter().copied()).collect(),
            handles: HashMap::new(),
            scope,
            depth: self.depth + 1,
        };
        sub.run()?;
        let outs: Vec<i32> = sub.sg.outputs().map(|v| v.iter().collect()).unwrap_or_default();
        outs.iter().map(|o| sub.value(*o)).collect()
    }

    /// Imports a subgraph as a standalone model (for IF branches decided at run time).
    pub fn standalone(&self, sg_ix: usize, facts: &[TypedFact]) -> TractResult<TypedModel> {
        ensure!(self.depth < MAX_NESTING, "subgraphs nested deeper than {MAX_NESTING}");
        let sg = self.file.subgraph(sg_ix)?;
        let ins: Vec<i32> = sg.inputs().map(|v| v.iter().collect()).unwrap_or_default();
        ensure!(ins.len() == facts.len(), "subgraph {sg_ix} takes {} inputs, got {}", ins.len(), facts.len());
        let mut model = TypedModel::default();
        let mut vars = Vars::default();
        let mut values = HashMap::new();
        for (ix, (t, fact)) in ins.iter().zip(facts).enumerate() {
            let o = model.add_source(format!("in{ix}"), fact.without_value())?;
            values.insert(*t, o);
        }
        let outlets = {
            let mut sub = Graph {
                file: self.file,
                sg,
                target: &mut model,
                vars: &mut vars,
                values,
                handles: HashMap::new(),
                scope: String::new(),
                depth: self.depth + 1,
            };
            sub.run()?;
            let outs: Vec<i32> = sg.outputs().map(|v| v.iter().collect()).unwrap_or_default();
            outs.iter().map(|o| sub.value(*o)).collect::<TractResult<Vec<_>>>()?
        };
        ensure!(vars.slots.is_empty(), "resource variables inside a run-time IF branch are not supported");
        model.select_output_outlets(&outlets)?;
        Ok(model)
    }
}

fn symbolic_fact(target: &TypedModel, info: &TensorInfo, input_ix: usize) -> TypedFact {
    let shape: TVec<TDim> = info
        .signature
        .iter()
        .enumerate()
        .map(|(axis, d)| match d {
            Some(d) => d.to_dim(),
            None if axis == 0 => target.sym("batch").into(),
            None => target.sym(&format!("d{input_ix}_{axis}")).into(),
        })
        .collect();
    info.dt.fact(shape)
}

/// Translates a TFLite model into a tract graph with explicit state.
pub(crate) fn import(bytes: &[u8], options: &LoadOptions) -> Result<Imported, EngineError> {
    let file = File::open(bytes)?;
    let missing: Vec<String> = file.census()?.into_iter().filter(|(_, (_, ok))| !ok).map(|(k, _)| k).collect();
    if !missing.is_empty() {
        return Err(EngineError::Unsupported(missing));
    }
    if !options.state.is_empty() {
        return Err(invalid("TFLite models carry their state in resource variables; state bindings are for ONNX"));
    }
    let main = file.subgraph(0)?;
    let chain = |e: TractError| EngineError::Invalid(format!("{e:#}"));

    // Initial values of resource variables, from the CALL_ONCE initialisation subgraphs.
    let mut initial: HashMap<String, Tensor> = HashMap::new();
    for op in main.operators().iter().flatten() {
        if let Some(o) = op.builtin_options_as_call_once_options() {
            let values = run_init(&file, o.init_subgraph_index().max(0) as usize).map_err(chain)?;
            initial.extend(values);
        }
    }

    let mut target = TypedModel::default();
    let mut vars = Vars::default();
    let mut values = HashMap::new();
    let input_ixs: Vec<i32> = main.inputs().map(|v| v.iter().collect()).unwrap_or_default();
    for (n, ix) in input_ixs.iter().enumerate() {
        let info = tensors::tensor_info(&main, *ix)?;
        if let Some((_, pinned)) = options.pins.iter().find(|(name, _)| *name == info.name) {
            let o = target.add_const(info.name.clone(), pinned.clone()).map_err(chain)?;
            values.insert(*ix, o);
            continue;
        }
        let fact = match options.shapes.iter().find(|(name, _)| *name == info.name) {
            Some((_, shape)) => {
                let fits = shape.len() == info.signature.len()
                    && shape.iter().zip(&info.signature).all(|(s, d)| d.is_none_or(|d| d == *s));
                if !fits {
                    return Err(invalid(format!(
                        "input {:?}: shape {shape:?} does not fit {:?}",
                        info.name, info.signature
                    )));
                }
                info.dt.fact(shape.clone())
            }
            None => symbolic_fact(&target, &info, n),
        };
        let mut o = target.add_source(info.name.clone(), fact).map_err(chain)?;
        if let Some(q) = info.qparams() {
            o = target.wire_node(format!("{}.dequantize", info.name), qops::Dequantize(q), &[o]).map_err(chain)?[0];
        }
        values.insert(*ix, o);
    }
    for (name, _) in &options.pins {
        if !input_ixs.iter().any(|ix| tensors::tensor_info(&main, *ix).map(|i| i.name == *name).unwrap_or(false)) {
            return Err(invalid(format!("pinned input {name:?} is not a model input")));
        }
    }
    let mut graph = Graph {
        file: &file,
        sg: main,
        target: &mut target,
        vars: &mut vars,
        values,
        handles: HashMap::new(),
        scope: String::new(),
        depth: 0,
    };
    graph.run().map_err(chain)?;

    let mut outputs = vec![];
    for ix in main.outputs().iter().flatten() {
        let info = tensors::tensor_info(&main, ix)?;
        let mut o = graph.value(ix).map_err(chain)?;
        if let Some(q) = info.qparams() {
            o = graph.wire(&format!("{}.quantize", info.name), qops::Quantize(q), &[o]).map_err(chain)?[0];
        }
        outputs.push((o, info.name));
    }
    let model_outputs = outputs.len();
    let mut states = vec![];
    for slot in &vars.slots {
        let Some(source) = slot.source else { continue };
        let input =
            target.input_outlets().map_err(chain)?.iter().position(|o| *o == source).expect("state source is an input");
        let fact = target.outlet_fact(source).map_err(chain)?.clone();
        let shape: Vec<usize> = fact.shape.as_concrete().map(|s| s.to_vec()).unwrap_or_default();
        let init = match initial.remove(&slot.key) {
            Some(t) => {
                if t.shape() != shape.as_slice() {
                    return Err(invalid(format!(
                        "variable {:?}: initialised with shape {:?}, used with {:?}",
                        slot.key,
                        t.shape(),
                        shape
                    )));
                }
                t.cast_to_dt(fact.datum_type).map_err(chain)?.into_owned()
            }
            None => Tensor::zero_dt(fact.datum_type, &shape).map_err(chain)?,
        };
        states.push(StateSlot { input, output: outputs.len(), initial: init });
        outputs.push((slot.current.unwrap_or(source), format!("state.{}", slot.key)));
    }
    let outlets: Vec<OutletId> = outputs.iter().map(|(o, _)| *o).collect();
    target.select_output_outlets(&outlets).map_err(chain)?;
    for (o, name) in outputs.iter().take(model_outputs) {
        let _ = target.set_outlet_label(*o, name.clone());
    }
    Ok(Imported { model: target, states })
}

/// Runs a CALL_ONCE initialisation subgraph and returns the value it assigns to each
/// variable (as reals for quantised variables, like the main graph carries them).
fn run_init(file: &File, sg_ix: usize) -> TractResult<HashMap<String, Tensor>> {
    let sg = file.subgraph(sg_ix)?;
    let mut model = TypedModel::default();
    let mut vars = Vars::default();
    let mut graph = Graph {
        file,
        sg,
        target: &mut model,
        vars: &mut vars,
        values: HashMap::new(),
        handles: HashMap::new(),
        scope: String::new(),
        depth: 1,
    };
    graph.run()?;
    let mut keys = vec![];
    let mut outlets = vec![];
    for slot in &vars.slots {
        ensure!(slot.source.is_none(), "initialisation subgraph reads variable {:?} before assigning it", slot.key);
        if let Some(o) = slot.current {
            keys.push(slot.key.clone());
            outlets.push(o);
        }
    }
    if outlets.is_empty() {
        return Ok(HashMap::new());
    }
    model.select_output_outlets(&outlets)?;
    let values = model.into_runnable()?.run(tvec!())?;
    Ok(keys.into_iter().zip(values).map(|(k, v)| (k, v.into_tensor())).collect())
}
