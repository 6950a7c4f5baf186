//! ONNX loading, with the fixes real exported models need before tract can type them.
//!
//! - Stale `value_info` shape annotations (PP-OCRv6) are ignored: tract's own inference
//!   decides every intermediate shape.
//! - Pinned inputs (Silero's `sr`) become initializers, and input shapes given at load
//!   replace symbolic ones.
//! - An `If` whose condition can be computed at load (from constants, pinned inputs and
//!   known shapes) is replaced by the branch it takes, so branches that disagree in shape
//!   (Silero) never reach the type checker. The condition is computed by tract itself on
//!   the slice of the graph that feeds it.
//! - Operators tract does not implement are all named before anything is built.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use prost::Message;
use tract_core::internal::*;
use tract_onnx::pb;
use tract_onnx::prelude::{Framework, InferenceModelExt};

use super::{bind_state, EngineError, Imported, LoadOptions, TensorSpec};

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

fn chain(e: TractError) -> EngineError {
    EngineError::Invalid(format!("{e:#}"))
}

/// Nested `If` branches are resolved at most this many times in all.
const MAX_IF_RESOLUTIONS: usize = 256;

fn decode(bytes: &[u8]) -> Result<pb::ModelProto, EngineError> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| invalid(format!("corrupt ONNX protobuf: {e}")))?;
    if proto.graph.is_none() {
        return Err(invalid("ONNX file has no graph"));
    }
    Ok(proto)
}

fn visit_nodes<'g>(graph: &'g pb::GraphProto, f: &mut dyn FnMut(&'g pb::NodeProto)) {
    for node in &graph.node {
        f(node);
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                visit_nodes(g, f);
            }
            for g in &attr.graphs {
                visit_nodes(g, f);
            }
        }
    }
}

fn op_counts(graph: &pb::GraphProto) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    visit_nodes(graph, &mut |n| {
        let name = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}:{}", n.domain, n.op_type)
        };
        *counts.entry(name).or_insert(0) += 1;
    });
    counts
}

fn declared_spec(v: &pb::ValueInfoProto) -> TensorSpec {
    use pb::tensor_shape_proto::dimension::Value;
    let (dt, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(v)) => v.to_string(),
                            Some(Value::DimParam(p)) => p.clone(),
                            None => "?".to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (elem_type_name(t.elem_type), dims)
        }
        _ => ("?".to_string(), vec![]),
    };
    TensorSpec { name: v.name.clone(), dtype: dt, shape, fact: super::unknown_fact() }
}

fn elem_type_name(t: i32) -> String {
    match t {
        1 => "F32",
        2 => "U8",
        3 => "I8",
        5 => "I16",
        6 => "I32",
        7 => "I64",
        9 => "Bool",
        10 => "F16",
        11 => "F64",
        _ => "?",
    }
    .to_string()
}

fn real_inputs(graph: &pb::GraphProto) -> impl Iterator<Item = &pb::ValueInfoProto> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph.input.iter().filter(move |i| !inits.contains(i.name.as_str()))
}

pub(crate) fn summary(bytes: &[u8]) -> Result<super::tflite::Summary, EngineError> {
    let proto = decode(bytes)?;
    let graph = proto.graph.as_ref().expect("checked by decode");
    let ops = op_counts(graph).into_iter().collect();
    let inputs = real_inputs(graph).map(declared_spec).collect();
    let outputs = graph.output.iter().map(declared_spec).collect();
    Ok((ops, Some((inputs, outputs))))
}

fn tensor_proto(name: &str, t: &Tensor) -> Result<pb::TensorProto, EngineError> {
    let data_type = match t.datum_type() {
        DatumType::F32 => 1,
        DatumType::U8 => 2,
        DatumType::I8 => 3,
        DatumType::I16 => 5,
        DatumType::I32 => 6,
        DatumType::I64 => 7,
        DatumType::Bool => 9,
        DatumType::F16 => 10,
        DatumType::F64 => 11,
        other => return Err(invalid(format!("cannot pin {name:?} to a {other:?} value"))),
    };
    Ok(pb::TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|d| *d as i64).collect(),
        data_type,
        raw_data: t.try_as_plain_ram().map_err(chain)?.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Turns pinned inputs into initializers.
fn apply_pins(graph: &mut pb::GraphProto, pins: &[(String, Tensor)]) -> Result<(), EngineError> {
    for (name, value) in pins {
        let pos = graph
            .input
            .iter()
            .position(|i| i.name == *name)
            .ok_or_else(|| invalid(format!("pinned input {name:?} is not a model input")))?;
        graph.input.remove(pos);
        graph.initializer.retain(|t| t.name != *name);
        graph.initializer.push(tensor_proto(name, value)?);
    }
    Ok(())
}

fn onnx() -> tract_onnx::Onnx {
    tract_onnx::onnx().with_ignore_value_info(true)
}

/// Parses a model proto into a typed model, with the given input shapes and dtypes.
fn typed(proto: &pb::ModelProto, shapes: &[(String, Vec<usize>)]) -> TractResult<TypedModel> {
    let mut model = onnx().model_for_proto_model(proto)?;
    let names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    for (ix, name) in names.iter().enumerate() {
        if let Some((_, shape)) = shapes.iter().find(|(n, _)| n == name) {
            let fact = model.input_fact(ix)?.clone().with_shape(shape.clone());
            model.set_input_fact(ix, fact)?;
        }
    }
    model.into_typed()
}

/// Computes the value of `target` at load, if it depends on nothing known only at run time.
fn constant_value(proto: &pb::ModelProto, target: &str, shapes: &[(String, Vec<usize>)]) -> Option<Tensor> {
    let graph = proto.graph.as_ref()?;
    let producer: HashMap<&str, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    let mut used_inputs = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if name.is_empty() {
            continue;
        }
        match producer.get(name) {
            Some(&i) if needed.insert(i) => {
                let node = &graph.node[i];
                if node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
                    return None; // control flow upstream: not decidable here
                }
                todo.extend(node.input.iter().map(|s| s.as_str()));
            }
            Some(_) => {}
            None => {
                if graph.input.iter().any(|i| i.name == name) {
                    used_inputs.insert(name.to_string());
                }
            }
        }
    }
    let mut slice = graph.clone();
    slice.node = needed.iter().map(|i| graph.node[*i].clone()).collect();
    slice.input.retain(|i| used_inputs.contains(&i.name) || graph.initializer.iter().any(|t| t.name == i.name));
    slice.output = vec![pb::ValueInfoProto { name: target.to_string(), ..Default::default() }];
    slice.value_info.clear();
    let sliced = pb::ModelProto { graph: Some(slice), ..proto.clone() };
    let model = std::panic::catch_unwind(|| typed(&sliced, shapes).and_then(|m| m.into_decluttered())).ok()?.ok()?;
    let fact = model.output_fact(0).ok()?;
    fact.konst.as_ref().map(|k| k.clone().into_tensor())
}

/// Replaces the `If` at `ix` in the main graph by the nodes of the branch it takes.
fn inline_branch(graph: &mut pb::GraphProto, ix: usize, take_then: bool) -> Result<(), EngineError> {
    let node = graph.node[ix].clone();
    let branch_name = if take_then { "then_branch" } else { "else_branch" };
    let branch = node
        .attribute
        .iter()
        .find(|a| a.name == branch_name)
        .and_then(|a| a.g.clone())
        .ok_or_else(|| invalid(format!("If {:?} has no {branch_name}", node.name)))?;
    if branch.output.len() != node.output.len() {
        return Err(invalid(format!(
            "If {:?}: branch has {} outputs for {}",
            node.name,
            branch.output.len(),
            node.output.len()
        )));
    }
    let mut nodes = branch.node.clone();
    for (k, (from, to)) in branch.output.iter().zip(&node.output).enumerate() {
        nodes.push(pb::NodeProto {
            name: format!("{}.{branch_name}.out{k}", node.name),
            op_type: "Identity".to_string(),
            input: vec![from.name.clone()],
            output: vec![to.clone()],
            ..Default::default()
        });
    }
    graph.initializer.extend(branch.initializer.iter().cloned());
    graph.node.splice(ix..=ix, nodes);
    Ok(())
}

/// Resolves every `If` whose condition is known at load, outermost first. Returns the
/// outputs of those left undecided.
fn resolve_ifs(proto: &mut pb::ModelProto, shapes: &[(String, Vec<usize>)]) -> Result<Vec<String>, EngineError> {
    let mut undecidable: HashSet<String> = HashSet::new();
    for _ in 0..MAX_IF_RESOLUTIONS {
        let graph = proto.graph.as_ref().expect("checked by decode");
        let next = graph.node.iter().position(|n| n.op_type == "If" && !undecidable.contains(&n.output[0]));
        let Some(ix) = next else {
            let mut left: Vec<String> = undecidable.into_iter().collect();
            left.sort();
            return Ok(left);
        };
        let node = graph.node[ix].clone();
        let cond = node.input.first().cloned().unwrap_or_default();
        match constant_value(proto, &cond, shapes).and_then(|t| t.cast_to_scalar::<bool>().ok()) {
            Some(take_then) => inline_branch(proto.graph.as_mut().expect("checked"), ix, take_then)?,
            None => {
                undecidable.insert(node.output.first().cloned().unwrap_or_default());
            }
        }
    }
    Err(invalid(format!("more than {MAX_IF_RESOLUTIONS} nested If nodes")))
}

fn elem_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        1 | 6 => 4,
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        7 | 11 | 12 | 13 => 8,
        _ => return None,
    })
}

/// Checks that every tensor stored in the file holds as many elements as its dims declare,
/// before tract allocates anything for it.
fn check_tensor(t: &pb::TensorProto) -> Result<(), EngineError> {
    let bad = |m: String| invalid(format!("tensor {:?}: {m}", t.name));
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(bad("external data is not supported".into()));
    }
    let count = t
        .dims
        .iter()
        .try_fold(1usize, |acc, d| usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d)))
        .ok_or_else(|| bad(format!("bad dims {:?}", t.dims)))?;
    let stored = if !t.raw_data.is_empty() {
        let size = elem_size(t.data_type).ok_or_else(|| bad(format!("unsupported data type {}", t.data_type)))?;
        if !t.raw_data.len().is_multiple_of(size) {
            return Err(bad(format!("{} raw bytes is not a whole number of elements", t.raw_data.len())));
        }
        t.raw_data.len() / size
    } else {
        t.float_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.double_data.len()
            + t.uint64_data.len()
            + t.string_data.len()
    };
    if stored != count && !(stored == 0 && count == 0) {
        return Err(bad(format!("dims {:?} declare {count} elements, the file holds {stored}", t.dims)));
    }
    Ok(())
}

fn check_tensors(graph: &pb::GraphProto) -> Result<(), EngineError> {
    graph.initializer.iter().try_for_each(check_tensor)?;
    let mut result = Ok(());
    visit_nodes(graph, &mut |n| {
        for a in &n.attribute {
            if let Some(t) = &a.t {
                if result.is_ok() {
                    result = check_tensor(t);
                }
            }
        }
    });
    result?;
    // Initializers of subgraphs.
    let mut sub = Ok(());
    visit_nodes(graph, &mut |n| {
        for a in &n.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                if sub.is_ok() {
                    sub = g.initializer.iter().try_for_each(check_tensor);
                }
            }
        }
    });
    sub
}

fn missing_ops(graph: &pb::GraphProto) -> Vec<String> {
    let onnx = onnx();
    let mut missing = BTreeSet::new();
    visit_nodes(graph, &mut |n| {
        let known =
            (n.domain.is_empty() || n.domain == "ai.onnx" || n.domain == "ai.onnx.ml" || n.domain == "com.microsoft")
                && onnx.op_register.0.contains_key(&n.op_type);
        if !known {
            missing.insert(if n.domain.is_empty() { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) });
        }
    });
    missing.into_iter().collect()
}

pub(crate) fn import(bytes: &[u8], options: &LoadOptions) -> Result<Imported, EngineError> {
    let mut proto = decode(bytes)?;
    check_tensors(proto.graph.as_ref().expect("checked by decode"))?;
    let missing = missing_ops(proto.graph.as_ref().expect("checked by decode"));
    if !missing.is_empty() {
        return Err(EngineError::Unsupported(missing));
    }
    apply_pins(proto.graph.as_mut().expect("checked by decode"), &options.pins)?;
    // A bound state starts as zeros with its symbolic dimensions at 1; its input takes that
    // shape unless the caller gave one.
    let mut shapes = options.shapes.clone();
    for (input, _) in &options.state {
        if shapes.iter().any(|(n, _)| n == input) {
            continue;
        }
        let graph = proto.graph.as_ref().expect("checked by decode");
        if let Some(v) = real_inputs(graph).find(|i| i.name == *input) {
            let dims = declared_spec(v).shape.iter().map(|d| d.parse::<usize>().unwrap_or(1)).collect();
            shapes.push((input.clone(), dims));
        }
    }
    let undecided = resolve_ifs(&mut proto, &shapes)?;
    let model = typed(&proto, &shapes).map_err(|e| {
        if undecided.is_empty() {
            chain(e)
        } else {
            invalid(format!(
                "{e:#} ({} If nodes undecided at load, producing {}: if their conditions depend on input shapes, give concrete input shapes)",
                undecided.len(),
                undecided.join(", ")
            ))
        }
    })?;
    let states = bind_state(&model, &options.state)?;
    Ok(Imported { model, states })
}
