//! The JSON side of the TensorFlow-Serving-shaped predict API
//! (<https://www.tensorflow.org/tfx/serving/api_rest#predict_api>).
//!
//! # Requests
//!
//! A request is a JSON object with exactly one of:
//!
//! - `"inputs"` (the *columnar* form, [`Form::Columnar`]): one tensor for a single-input model,
//!   or an object mapping every input name to its tensor;
//! - `"instances"` (the *row* form, [`Form::Row`]): a non-empty array of instances, each one
//!   tensor value *without* the batch axis (single-input model) or an object mapping every input
//!   name to such a value. The instances are stacked along a new leading batch axis, so each
//!   input's tensor has shape `[instances.len()] + instance shape`.
//!
//! `"signature_name"` (a string) is accepted and ignored; any other key is an error.
//!
//! Tensors are nested JSON arrays, scalars plain values. Floating-point inputs (f16, f32, f64)
//! take any JSON number, plus the strings `"NaN"`, `"Infinity"` and `"-Infinity"` so that
//! responses can be sent back as requests; a finite number too large for the dtype is an
//! error rather than an infinity. Integer inputs (i8, u8, i16, u16, i32, u32, i64, u64) take
//! JSON integers only, range-checked. Bool inputs take `true` and `false`.
//!
//! The value's shape must fit the model's: same rank, fixed dimensions equal, symbolic
//! dimensions (`None` in [`InputSpec::shape`], shown as `?` in messages) anything.
//!
//! # Responses
//!
//! A columnar request is answered with `{"outputs": Y}`, where `Y` is the tensor of a
//! single-output model or an object mapping each output name to its tensor. A row request is
//! answered with `{"predictions": [P0, P1, ...]}`, the outputs unstacked along their leading
//! (batch) axis: one entry per instance, each the output's value for that instance
//! (single-output model) or an object mapping output names to those values.
//!
//! JSON has no NaN or infinities: like TensorFlow Serving, the response encodes them as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"` (not `null`, which would lose the value).
//!
//! Parsing builds a [`serde_json::Value`] and then flattens each input's nested arrays in a
//! single recursive pass that checks rectangularity, converts the leaves to the input dtype and
//! collects them straight into the tensor's buffer; rendering writes the JSON text directly.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tract_core::internal::*;

/// What the model expects for one input.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec<'a> {
    /// The input's name, as clients send it.
    pub name: &'a str,
    /// The element type.
    pub dtype: DatumType,
    /// The shape; `None` is a symbolic dimension, which takes any size.
    pub shape: &'a [Option<usize>],
}

/// What can go wrong reading a request or writing a response.
///
/// The `Display` text is the message for the client. [`JsonError::Output`] is the server's
/// fault (an output the JSON encoding cannot carry); the others are the client's (HTTP 400):
/// see [`JsonError::is_client_error`].
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The body is not JSON at all.
    #[error("request body is not valid JSON: {0}")]
    Syntax(serde_json::Error),
    /// The body is JSON but not a predict request (top-level keys, input names, instances).
    #[error("{0}")]
    Request(String),
    /// One input's value does not fit what the model expects.
    #[error("input \"{name}\" (expected {expected}): {problem}")]
    Input {
        /// The input's name.
        name: String,
        /// What the model expects: dtype and shape, e.g. `f32 [?, 224, 224, 3]`.
        expected: String,
        /// What was found instead.
        problem: String,
    },
    /// The outputs cannot be rendered in the requested form.
    #[error("{0}")]
    Output(String),
}

impl JsonError {
    /// Whether the request was at fault (HTTP 400) rather than the server (HTTP 500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, JsonError::Output(_))
    }
}

/// Which of the two request forms a request used; the response uses the matching form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `{"inputs": ...}`, answered with `{"outputs": ...}`.
    Columnar,
    /// `{"instances": [...]}`, answered with `{"predictions": [...]}`.
    Row,
}

/// Parses a request body into one tensor per model input, in `specs` order.
pub fn parse_request(body: &[u8], specs: &[InputSpec]) -> Result<(Form, Vec<Tensor>), JsonError> {
    let root: Value = serde_json::from_slice(body).map_err(JsonError::Syntax)?;
    let Value::Object(mut top) = root else {
        return Err(JsonError::Request(format!(
            "the request must be a JSON object with \"inputs\" or \"instances\"; found {}",
            describe(&root)
        )));
    };
    if let Some(key) = top.keys().find(|k| !matches!(k.as_str(), "inputs" | "instances" | "signature_name")) {
        return Err(JsonError::Request(format!(
            "unknown key \"{key}\" in the request; expected \"inputs\" or \"instances\" \
             (and optionally \"signature_name\")"
        )));
    }
    if let Some(sig) = top.get("signature_name") {
        if !sig.is_string() {
            return Err(JsonError::Request(format!("\"signature_name\" must be a string; found {}", describe(sig))));
        }
    }
    match (top.remove("inputs"), top.remove("instances")) {
        (Some(_), Some(_)) => {
            Err(JsonError::Request("the request has both \"inputs\" and \"instances\"; send exactly one".to_string()))
        }
        (None, None) => Err(JsonError::Request(
            "the request has neither \"inputs\" (columnar form) nor \"instances\" (row form)".to_string(),
        )),
        (Some(inputs), None) => Ok((Form::Columnar, parse_columnar(&inputs, specs)?)),
        (None, Some(instances)) => Ok((Form::Row, parse_rows(&instances, specs)?)),
    }
}

/// Renders outputs (names in model order) in the form the request used.
pub fn render_response(form: Form, names: &[&str], outputs: &[Tensor]) -> Result<Vec<u8>, JsonError> {
    if names.len() != outputs.len() {
        return Err(JsonError::Output(format!("{} output names for {} outputs", names.len(), outputs.len())));
    }
    let mut out = Vec::with_capacity(64 + outputs.iter().map(|t| t.len() * 12).sum::<usize>());
    match form {
        Form::Columnar => {
            out.extend_from_slice(b"{\"outputs\":");
            if outputs.len() == 1 {
                write_tensor(&mut out, names[0], &outputs[0], None)?;
            } else {
                out.push(b'{');
                for (i, (name, t)) in names.iter().zip(outputs).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_key(&mut out, name);
                    write_tensor(&mut out, name, t, None)?;
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
        Form::Row => {
            let batch = row_batch(names, outputs)?;
            out.extend_from_slice(b"{\"predictions\":[");
            for i in 0..batch {
                if i > 0 {
                    out.push(b',');
                }
                if outputs.len() == 1 {
                    write_tensor(&mut out, names[0], &outputs[0], Some(i))?;
                } else {
                    out.push(b'{');
                    for (j, (name, t)) in names.iter().zip(outputs).enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        write_key(&mut out, name);
                        write_tensor(&mut out, name, t, Some(i))?;
                    }
                    out.push(b'}');
                }
            }
            out.extend_from_slice(b"]}");
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Where one input's value comes from.
enum Source<'v> {
    /// The whole tensor (columnar form).
    Whole(&'v Value),
    /// One value per instance, to stack along a new batch axis (row form).
    Instances(Vec<&'v Value>),
}

fn parse_columnar(inputs: &Value, specs: &[InputSpec]) -> Result<Vec<Tensor>, JsonError> {
    match inputs {
        Value::Object(map) => {
            check_names(map, specs, "\"inputs\"")?;
            specs.iter().map(|spec| build_input(spec, Source::Whole(&map[spec.name]))).collect()
        }
        value if specs.len() == 1 => Ok(vec![build_input(&specs[0], Source::Whole(value))?]),
        value => Err(JsonError::Request(format!(
            "the model has {} inputs ({}), so \"inputs\" must be an object mapping each input name to its \
             tensor; found {}",
            specs.len(),
            list_specs(specs),
            describe(value)
        ))),
    }
}

fn parse_rows(instances: &Value, specs: &[InputSpec]) -> Result<Vec<Tensor>, JsonError> {
    let instances = match instances {
        Value::Array(a) if !a.is_empty() => a,
        other => {
            return Err(JsonError::Request(format!(
                "\"instances\" must be a non-empty array of instances; found {}",
                if other.is_array() { "an empty array".to_string() } else { describe(other) }
            )))
        }
    };
    let mut per_input: Vec<Vec<&Value>> = specs.iter().map(|_| Vec::with_capacity(instances.len())).collect();
    for (i, instance) in instances.iter().enumerate() {
        match instance {
            Value::Object(map) => {
                check_names(map, specs, &format!("instance {i}"))?;
                for (values, spec) in per_input.iter_mut().zip(specs) {
                    values.push(&map[spec.name]);
                }
            }
            value if specs.len() == 1 => per_input[0].push(value),
            value => {
                return Err(JsonError::Request(format!(
                    "the model has {} inputs ({}), so each instance must be an object mapping each input name \
                     to its value; instance {i} is {}",
                    specs.len(),
                    list_specs(specs),
                    describe(value)
                )))
            }
        }
    }
    specs.iter().zip(per_input).map(|(spec, values)| build_input(spec, Source::Instances(values))).collect()
}

/// Checks that `map` names every input and nothing else.
fn check_names(map: &Map<String, Value>, specs: &[InputSpec], what: &str) -> Result<(), JsonError> {
    if let Some(unknown) = map.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
        return Err(JsonError::Request(format!(
            "{what}: unknown input \"{unknown}\"; the model's inputs are {}",
            list_specs(specs)
        )));
    }
    if let Some(missing) = specs.iter().find(|s| !map.contains_key(s.name)) {
        return Err(JsonError::Request(format!(
            "{what}: missing input \"{}\" ({}); the model's inputs are {}",
            missing.name,
            expected(missing),
            list_specs(specs)
        )));
    }
    Ok(())
}

/// Converts one JSON leaf to an element, or says what is wrong with it.
type Leaf<T> = fn(&Value) -> Result<T, String>;

fn build_input(spec: &InputSpec, source: Source) -> Result<Tensor, JsonError> {
    use DatumType as D;
    match spec.dtype {
        D::F16 => build::<f16>(spec, source, |v| float_leaf(v, "f16", f16::from_f64, |x: f16| x.is_infinite())),
        D::F32 => build::<f32>(spec, source, |v| float_leaf(v, "f32", |x| x as f32, f32::is_infinite)),
        D::F64 => build::<f64>(spec, source, |v| float_leaf(v, "f64", |x| x, f64::is_infinite)),
        D::I8 => build::<i8>(spec, source, int_leaf::<i8>),
        D::U8 => build::<u8>(spec, source, int_leaf::<u8>),
        D::I16 => build::<i16>(spec, source, int_leaf::<i16>),
        D::U16 => build::<u16>(spec, source, int_leaf::<u16>),
        D::I32 => build::<i32>(spec, source, int_leaf::<i32>),
        D::U32 => build::<u32>(spec, source, int_leaf::<u32>),
        D::I64 => build::<i64>(spec, source, int_leaf::<i64>),
        D::U64 => build::<u64>(spec, source, int_leaf::<u64>),
        D::Bool => build::<bool>(spec, source, bool_leaf),
        other => Err(input_err(spec, false, format!("the model's dtype {other:?} cannot be sent as JSON"))),
    }
}

fn build<T: Datum + Default>(spec: &InputSpec, source: Source, leaf: Leaf<T>) -> Result<Tensor, JsonError> {
    let mut walk = Walk { leaf, data: Vec::new(), path: Vec::new(), bad: None };
    let shape = match source {
        Source::Whole(value) => {
            let err = |problem| input_err(spec, false, problem);
            let shape = walk.value(value).map_err(err)?;
            check_shape(spec.shape, &shape).map_err(err)?;
            if let Some((path, problem)) = walk.bad.take() {
                return Err(err(format!("{} is {problem}", fmt_path(&path))));
            }
            shape
        }
        Source::Instances(values) => {
            let err = |problem| input_err(spec, true, problem);
            let Some((batch_dim, instance_spec)) = spec.shape.split_first() else {
                return Err(err(
                    "the input is a scalar, which has no batch axis to stack instances along; send it with \
                     \"inputs\""
                        .to_string(),
                ));
            };
            let mut first: Option<Vec<usize>> = None;
            for (i, value) in values.iter().enumerate() {
                let shape = walk.value(value).map_err(|p| err(format!("instance {i}: {p}")))?;
                check_shape(instance_spec, &shape).map_err(|p| err(format!("instance {i}: {p}")))?;
                if let Some((path, problem)) = walk.bad.take() {
                    return Err(err(format!("instance {i}: {} is {problem}", fmt_path(&path))));
                }
                match &first {
                    None => first = Some(shape),
                    Some(f) if *f != shape => {
                        return Err(err(format!(
                            "instance {i} has shape {}, but instance 0 has shape {}; all instances must have the \
                             same shape",
                            fmt_dims(&shape),
                            fmt_dims(f)
                        )))
                    }
                    Some(_) => {}
                }
            }
            if let Some(b) = *batch_dim {
                if b != values.len() {
                    return Err(err(format!(
                        "the model takes a batch of exactly {b}, so \"instances\" must hold exactly {b} instance{}; \
                         found {}",
                        if b == 1 { "" } else { "s" },
                        values.len()
                    )));
                }
            }
            let mut shape = first.unwrap_or_default();
            shape.insert(0, values.len());
            shape
        }
    };
    let array = tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(&shape), walk.data)
        .map_err(|e| input_err(spec, false, format!("internal error building the tensor: {e}")))?;
    Ok(array.into_tensor())
}

/// Most elements reserved up front for one tensor value; more grow the buffer as usual.
const MAX_RESERVE: usize = 1 << 20;

/// One pass over nested arrays: checks they are rectangular and collects the converted leaves.
struct Walk<T> {
    leaf: Leaf<T>,
    /// Elements so far, in C order (all instances, one after the other).
    data: Vec<T>,
    /// Index of the current element at each depth.
    path: Vec<usize>,
    /// The first leaf that did not convert: where, and what was wrong with it. Reported after
    /// the shape, so that a structural error wins over a value error.
    bad: Option<(Vec<usize>, String)>,
}

impl<T: Default> Walk<T> {
    /// Walks one tensor value and returns its shape.
    fn value(&mut self, value: &Value) -> Result<Vec<usize>, String> {
        // The shape is the length of the first array at each depth; `rec` then holds every
        // other array to it.
        let mut shape = Vec::new();
        let mut cur = value;
        while let Value::Array(a) = cur {
            shape.push(a.len());
            match a.first() {
                Some(first) => cur = first,
                None => break,
            }
        }
        // Reserve for the elements the shape promises, within reason: a ragged body can
        // promise far more than it holds (and the product can overflow).
        let promised = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
        self.data.reserve(promised.min(MAX_RESERVE));
        self.path.clear();
        self.rec(value, &shape)?;
        Ok(shape)
    }

    fn rec(&mut self, value: &Value, shape: &[usize]) -> Result<(), String> {
        let depth = self.path.len();
        if depth == shape.len() {
            if value.is_array() {
                return Err(format!(
                    "the nested arrays are not rectangular: {} is an array, but {} is not",
                    fmt_path(&self.path),
                    fmt_path(&vec![0; depth])
                ));
            }
            match (self.leaf)(value) {
                Ok(x) => self.data.push(x),
                Err(problem) => {
                    if self.bad.is_none() {
                        self.bad = Some((self.path.clone(), problem));
                    }
                    self.data.push(T::default());
                }
            }
            return Ok(());
        }
        match value {
            Value::Array(a) if a.len() == shape[depth] => {
                for (i, x) in a.iter().enumerate() {
                    self.path.push(i);
                    self.rec(x, shape)?;
                    self.path.pop();
                }
                Ok(())
            }
            Value::Array(a) => Err(format!(
                "the nested arrays are not rectangular: {} has {} element{}, but {} has {}",
                fmt_path(&self.path),
                a.len(),
                if a.len() == 1 { "" } else { "s" },
                fmt_path(&vec![0; depth]),
                shape[depth]
            )),
            other => Err(format!(
                "the nested arrays are not rectangular: {} is {}, but {} is an array",
                fmt_path(&self.path),
                describe(other),
                fmt_path(&vec![0; depth])
            )),
        }
    }
}

/// Checks a found shape against the spec: same rank, fixed dimensions equal.
fn check_shape(spec: &[Option<usize>], found: &[usize]) -> Result<(), String> {
    if spec.len() != found.len() {
        return Err(format!("found shape {} (rank {}), expected rank {}", fmt_dims(found), found.len(), spec.len()));
    }
    for (axis, (want, got)) in spec.iter().zip(found).enumerate() {
        if let Some(want) = want {
            if want != got {
                return Err(format!("found shape {}: dimension {axis} is {got}, expected {want}", fmt_dims(found)));
            }
        }
    }
    Ok(())
}

fn float_leaf<T: Copy>(value: &Value, dtype: &str, cast: fn(f64) -> T, is_inf: fn(T) -> bool) -> Result<T, String> {
    match value {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(|| format!("{n}, which is not a number {dtype} can hold"))?;
            let y = cast(x);
            if x.is_finite() && is_inf(y) {
                return Err(format!("{n}, which is out of range for {dtype}"));
            }
            Ok(y)
        }
        Value::String(s) if s == "NaN" => Ok(cast(f64::NAN)),
        Value::String(s) if s == "Infinity" => Ok(cast(f64::INFINITY)),
        Value::String(s) if s == "-Infinity" => Ok(cast(f64::NEG_INFINITY)),
        other => Err(format!("{}, expected a number (or \"NaN\", \"Infinity\", \"-Infinity\")", describe(other))),
    }
}

fn int_leaf<T>(value: &Value) -> Result<T, String>
where
    T: TryFrom<i64> + TryFrom<u64> + IntRange,
{
    let out_of_range = |n: &dyn std::fmt::Display| {
        format!("{n}, which is out of range for {} ({}..={})", T::NAME, T::MIN_TEXT, T::MAX_TEXT)
    };
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                T::try_from(u).map_err(|_| out_of_range(n))
            } else if let Some(i) = n.as_i64() {
                T::try_from(i).map_err(|_| out_of_range(n))
            } else if n.as_f64().is_some_and(|x| x.fract() == 0.0 && x.abs() >= 9.2e18) {
                // An integer too large for i64/u64, which serde_json reads as a float.
                Err(out_of_range(n))
            } else {
                Err(format!("{n}, but {} takes integers only", T::NAME))
            }
        }
        other => Err(format!("{}, expected an integer", describe(other))),
    }
}

fn bool_leaf(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("{}, expected true or false", describe(other))),
    }
}

/// Names and bounds of the integer dtypes, for messages.
trait IntRange {
    const NAME: &'static str;
    const MIN_TEXT: &'static str;
    const MAX_TEXT: &'static str;
}

macro_rules! int_range {
    ($($t:ty: $name:literal, $min:literal, $max:literal;)*) => {
        $(impl IntRange for $t {
            const NAME: &'static str = $name;
            const MIN_TEXT: &'static str = $min;
            const MAX_TEXT: &'static str = $max;
        })*
    };
}

int_range! {
    i8: "i8", "-128", "127";
    u8: "u8", "0", "255";
    i16: "i16", "-32768", "32767";
    u16: "u16", "0", "65535";
    i32: "i32", "-2147483648", "2147483647";
    u32: "u32", "0", "4294967295";
    i64: "i64", "-9223372036854775808", "9223372036854775807";
    u64: "u64", "0", "18446744073709551615";
}

fn input_err(spec: &InputSpec, row: bool, problem: String) -> JsonError {
    let mut expected = expected(spec);
    if row && !spec.shape.is_empty() {
        let _ = write!(expected, ", each instance {}", fmt_spec_dims(&spec.shape[1..]));
    }
    JsonError::Input { name: spec.name.to_string(), expected, problem }
}

/// `f32 [?, 224, 224, 3]`.
fn expected(spec: &InputSpec) -> String {
    format!("{} {}", dtype_name(spec.dtype), fmt_spec_dims(spec.shape))
}

/// `"a" (f32 [?, 3]), "b" (i64 [?])`, or `none` for a model without inputs.
fn list_specs(specs: &[InputSpec]) -> String {
    if specs.is_empty() {
        return "none".to_string();
    }
    specs.iter().map(|s| format!("\"{}\" ({})", s.name, expected(s))).collect::<Vec<_>>().join(", ")
}

fn dtype_name(dt: DatumType) -> String {
    use DatumType as D;
    match dt {
        D::Bool => "bool".to_string(),
        D::F16 => "f16".to_string(),
        D::F32 => "f32".to_string(),
        D::F64 => "f64".to_string(),
        D::I8 => "i8".to_string(),
        D::U8 => "u8".to_string(),
        D::I16 => "i16".to_string(),
        D::U16 => "u16".to_string(),
        D::I32 => "i32".to_string(),
        D::U32 => "u32".to_string(),
        D::I64 => "i64".to_string(),
        D::U64 => "u64".to_string(),
        other => format!("{other:?}"),
    }
}

fn fmt_spec_dims(dims: &[Option<usize>]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string())).collect();
    format!("[{}]", dims.join(", "))
}

fn fmt_dims(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// An index path inside the value, `[1, 0, 2]`.
fn fmt_path(path: &[usize]) -> String {
    if path.is_empty() {
        "the value".to_string()
    } else {
        format!("element {}", fmt_dims(path))
    }
}

/// A short description of a JSON value for messages: the value itself for scalars.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 32 => format!("the string {s:?}"),
        Value::String(s) => format!("the string {:?}...", s.chars().take(32).collect::<String>()),
        Value::Array(a) if a.is_empty() => "an empty array".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The batch size of a row-form response: every output's leading dimension, which must agree.
fn row_batch(names: &[&str], outputs: &[Tensor]) -> Result<usize, JsonError> {
    let mut batch: Option<(usize, &str)> = None;
    for (name, t) in names.iter().zip(outputs) {
        let Some(&n) = t.shape().first() else {
            return Err(JsonError::Output(format!(
                "output \"{name}\" is a scalar, which has no batch axis to split into predictions"
            )));
        };
        match batch {
            None => batch = Some((n, name)),
            Some((b, first)) if b != n => {
                return Err(JsonError::Output(format!(
                    "output \"{name}\" has batch size {n}, but output \"{first}\" has {b}; predictions need one \
                     batch size"
                )))
            }
            Some(_) => {}
        }
    }
    batch.map(|(b, _)| b).ok_or_else(|| JsonError::Output("the model has no outputs to make predictions".to_string()))
}

fn write_key(out: &mut Vec<u8>, name: &str) {
    serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
    out.push(b':');
}

/// Writes a tensor as nested arrays; with `index`, only its `index`-th slice along axis 0.
fn write_tensor(out: &mut Vec<u8>, name: &str, t: &Tensor, index: Option<usize>) -> Result<(), JsonError> {
    let (shape, range) = match index {
        None => (t.shape(), 0..t.len()),
        Some(i) => {
            let inner: usize = t.shape()[1..].iter().product();
            (&t.shape()[1..], i * inner..(i + 1) * inner)
        }
    };
    fn go<T: Datum>(
        out: &mut Vec<u8>,
        t: &Tensor,
        range: std::ops::Range<usize>,
        shape: &[usize],
        elem: fn(&mut Vec<u8>, &T),
    ) -> TractResult<()> {
        write_nested(out, &t.try_as_plain_ram()?.as_slice::<T>()?[range], shape, elem);
        Ok(())
    }
    use DatumType as D;
    let r = match t.datum_type() {
        D::F16 => go::<f16>(out, t, range, shape, |o, x| write_float(o, x.to_f32())),
        D::F32 => go::<f32>(out, t, range, shape, |o, x| write_float(o, *x)),
        D::F64 => go::<f64>(out, t, range, shape, |o, x| write_float(o, *x)),
        D::I8 => go::<i8>(out, t, range, shape, write_int),
        D::U8 => go::<u8>(out, t, range, shape, write_int),
        D::I16 => go::<i16>(out, t, range, shape, write_int),
        D::U16 => go::<u16>(out, t, range, shape, write_int),
        D::I32 => go::<i32>(out, t, range, shape, write_int),
        D::U32 => go::<u32>(out, t, range, shape, write_int),
        D::I64 => go::<i64>(out, t, range, shape, write_int),
        D::U64 => go::<u64>(out, t, range, shape, write_int),
        D::Bool => go::<bool>(out, t, range, shape, |o, b| o.extend_from_slice(if *b { b"true" } else { b"false" })),
        other => {
            return Err(JsonError::Output(format!("output \"{name}\" has dtype {other:?}, which JSON cannot carry")))
        }
    };
    r.map_err(|e| JsonError::Output(format!("output \"{name}\": {e}")))
}

fn write_nested<T>(out: &mut Vec<u8>, data: &[T], shape: &[usize], elem: fn(&mut Vec<u8>, &T)) {
    let Some((&n, inner_shape)) = shape.split_first() else {
        elem(out, &data[0]);
        return;
    };
    out.push(b'[');
    if inner_shape.is_empty() {
        for (i, x) in data.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            elem(out, x);
        }
    } else {
        let inner: usize = inner_shape.iter().product();
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            write_nested(out, &data[i * inner..(i + 1) * inner], inner_shape, elem);
        }
    }
    out.push(b']');
}

/// Finite floats as JSON numbers; NaN and infinities as TF Serving spells them, in strings.
fn write_float<F: serde::Serialize + Into<f64> + Copy>(out: &mut Vec<u8>, x: F) {
    let wide: f64 = x.into();
    if wide.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if wide == f64::INFINITY {
        out.extend_from_slice(b"\"Infinity\"");
    } else if wide == f64::NEG_INFINITY {
        out.extend_from_slice(b"\"-Infinity\"");
    } else {
        serde_json::to_writer(&mut *out, &x).expect("writing to a Vec cannot fail");
    }
}

fn write_int<T: serde::Serialize>(out: &mut Vec<u8>, x: &T) {
    serde_json::to_writer(&mut *out, x).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(name: &'a str, dtype: DatumType, shape: &'a [Option<usize>]) -> InputSpec<'a> {
        InputSpec { name, dtype, shape }
    }

    fn parse(body: &str, specs: &[InputSpec]) -> Result<(Form, Vec<Tensor>), JsonError> {
        parse_request(body.as_bytes(), specs)
    }

    /// The error message for a request that must fail.
    fn err(body: &str, specs: &[InputSpec]) -> String {
        match parse(body, specs) {
            Ok((form, t)) => panic!("{body} parsed as {form:?} {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_contains(msg: &str, parts: &[&str]) {
        for p in parts {
            assert!(msg.contains(p), "{msg:?} does not contain {p:?}");
        }
    }

    fn render(form: Form, names: &[&str], outputs: &[Tensor]) -> String {
        String::from_utf8(render_response(form, names, outputs).unwrap()).unwrap()
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    const F32_N3: &[Option<usize>] = &[None, Some(3)];

    // --- request forms ---

    #[test]
    fn columnar_single_tensor() {
        let specs = [spec("x", DatumType::F32, F32_N3)];
        let (form, t) = parse(r#"{"inputs": [[1, 2.5, -3], [4, 5, 6]]}"#, &specs).unwrap();
        assert_eq!(form, Form::Columnar);
        assert_eq!(t, vec![tensor2(&[[1f32, 2.5, -3.0], [4.0, 5.0, 6.0]])]);
    }

    #[test]
    fn columnar_named_object_in_spec_order() {
        let specs = [spec("a", DatumType::F32, &[Some(2)]), spec("b", DatumType::I64, &[])];
        let (form, t) =
            parse(r#"{"signature_name": "serving_default", "inputs": {"b": 7, "a": [1, 2]}}"#, &specs).unwrap();
        assert_eq!(form, Form::Columnar);
        assert_eq!(t, vec![tensor1(&[1f32, 2.0]), tensor0(7i64)]);
    }

    #[test]
    fn columnar_named_object_for_single_input() {
        let specs = [spec("x", DatumType::U8, &[None])];
        let (_, t) = parse(r#"{"inputs": {"x": [0, 255]}}"#, &specs).unwrap();
        assert_eq!(t, vec![tensor1(&[0u8, 255])]);
    }

    #[test]
    fn columnar_scalar() {
        let specs = [spec("x", DatumType::F64, &[])];
        let (_, t) = parse(r#"{"inputs": 0.5}"#, &specs).unwrap();
        assert_eq!(t, vec![tensor0(0.5f64)]);
    }

    #[test]
    fn row_single_input_stacks_instances() {
        let specs = [spec("x", DatumType::F32, F32_N3)];
        let (form, t) = parse(r#"{"instances": [[1, 2, 3], [4, 5, 6]]}"#, &specs).unwrap();
        assert_eq!(form, Form::Row);
        assert_eq!(t, vec![tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]])]);
    }

    #[test]
    fn row_scalar_instances_make_a_vector() {
        let specs = [spec("x", DatumType::I32, &[None])];
        let (_, t) = parse(r#"{"instances": [1, 2, 3]}"#, &specs).unwrap();
        assert_eq!(t, vec![tensor1(&[1i32, 2, 3])]);
    }

    #[test]
    fn row_named_instances() {
        let specs = [spec("a", DatumType::F32, F32_N3), spec("m", DatumType::Bool, &[None])];
        let body = r#"{"instances": [{"a": [1, 2, 3], "m": true}, {"m": false, "a": [4, 5, 6]}]}"#;
        let (form, t) = parse(body, &specs).unwrap();
        assert_eq!(form, Form::Row);
        assert_eq!(t, vec![tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]]), tensor1(&[true, false])]);
    }

    #[test]
    fn row_fixed_batch_of_one() {
        let specs = [spec("x", DatumType::F32, &[Some(1), Some(2)])];
        let (_, t) = parse(r#"{"instances": [[1, 2]]}"#, &specs).unwrap();
        assert_eq!(t, vec![tensor2(&[[1f32, 2.0]])]);
        let msg = err(r#"{"instances": [[1, 2], [3, 4]]}"#, &specs);
        assert_contains(&msg, &["\"x\"", "f32 [1, 2]", "exactly 1 instance;", "found 2"]);
    }

    #[test]
    fn symbolic_dims_take_any_size_and_empty_dims_work() {
        let specs = [spec("x", DatumType::F32, &[None, None])];
        let (_, t) = parse(r#"{"inputs": [[], []]}"#, &specs).unwrap();
        assert_eq!(t[0].shape(), &[2, 0]);
        let (_, t) = parse(r#"{"inputs": [[1, 2, 3, 4, 5]]}"#, &specs).unwrap();
        assert_eq!(t[0].shape(), &[1, 5]);
    }

    #[test]
    fn float_inputs_take_special_strings_and_integers() {
        let specs = [spec("x", DatumType::F32, &[Some(4)])];
        let (_, t) = parse(r#"{"inputs": ["NaN", "Infinity", "-Infinity", 3]}"#, &specs).unwrap();
        let v = t[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[f32::INFINITY, f32::NEG_INFINITY, 3.0]);
    }

    #[test]
    fn f16_input() {
        let specs = [spec("x", DatumType::F16, &[Some(2)])];
        let (_, t) = parse(r#"{"inputs": [1.5, -2]}"#, &specs).unwrap();
        assert_eq!(t, vec![tensor1(&[f16::from_f32(1.5), f16::from_f32(-2.0)])]);
        let msg = err(r#"{"inputs": [1.5, 70000]}"#, &specs);
        assert_contains(&msg, &["\"x\"", "f16 [2]", "element [1] is 70000", "out of range for f16"]);
    }

    #[test]
    fn all_integer_dtypes_take_their_bounds() {
        let cases: &[(DatumType, &str, Tensor)] = &[
            (DatumType::I8, "[-128, 127]", tensor1(&[i8::MIN, i8::MAX])),
            (DatumType::U8, "[0, 255]", tensor1(&[0u8, u8::MAX])),
            (DatumType::I16, "[-32768, 32767]", tensor1(&[i16::MIN, i16::MAX])),
            (DatumType::U16, "[0, 65535]", tensor1(&[0u16, u16::MAX])),
            (DatumType::I32, "[-2147483648, 2147483647]", tensor1(&[i32::MIN, i32::MAX])),
            (DatumType::U32, "[0, 4294967295]", tensor1(&[0u32, u32::MAX])),
            (DatumType::I64, "[-9223372036854775808, 9223372036854775807]", tensor1(&[i64::MIN, i64::MAX])),
            (DatumType::U64, "[0, 18446744073709551615]", tensor1(&[0u64, u64::MAX])),
        ];
        for (dt, body, want) in cases {
            let specs = [spec("x", *dt, &[Some(2)])];
            let (_, t) = parse(&format!(r#"{{"inputs": {body}}}"#), &specs).unwrap();
            assert_eq!(&t[0], want, "{dt:?}");
        }
    }

    #[test]
    fn model_without_inputs() {
        let (form, t) = parse(r#"{"inputs": {}}"#, &[]).unwrap();
        assert_eq!((form, t.len()), (Form::Columnar, 0));
    }

    // --- request errors ---

    #[test]
    fn invalid_json() {
        let msg = err(r#"{"inputs": [1, 2"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["not valid JSON"]);
        assert!(parse_request(b"\xff", &[]).unwrap_err().is_client_error());
    }

    #[test]
    fn top_level_not_an_object() {
        let msg = err("[1, 2]", &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["JSON object", "\"inputs\" or \"instances\"", "found an array"]);
    }

    #[test]
    fn both_inputs_and_instances() {
        let msg = err(r#"{"inputs": [1], "instances": [1]}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["both \"inputs\" and \"instances\""]);
    }

    #[test]
    fn neither_inputs_nor_instances() {
        let msg = err(r#"{"signature_name": "serving_default"}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["neither \"inputs\"", "nor \"instances\""]);
    }

    #[test]
    fn unknown_top_level_key() {
        let msg = err(r#"{"inputs": [1], "outputs": [2]}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["unknown key \"outputs\"", "\"signature_name\""]);
    }

    #[test]
    fn signature_name_must_be_a_string() {
        let msg = err(r#"{"inputs": [1], "signature_name": 3}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["\"signature_name\" must be a string", "found 3"]);
    }

    #[test]
    fn ragged_arrays() {
        let specs = [spec("x", DatumType::F32, F32_N3)];
        let msg = err(r#"{"inputs": [[1, 2, 3], [4, 5]]}"#, &specs);
        assert_contains(&msg, &["\"x\"", "f32 [?, 3]", "not rectangular", "element [1] has 2 elements", "[0] has 3"]);
        let msg = err(r#"{"inputs": [[1, 2, 3], 4]}"#, &specs);
        assert_contains(&msg, &["not rectangular", "element [1] is 4", "element [0] is an array"]);
        let msg = err(r#"{"inputs": [[1, 2, 3], [4, [5], 6]]}"#, &specs);
        assert_contains(&msg, &["not rectangular", "element [1, 1] is an array", "element [0, 0] is not"]);
        let msg = err(r#"{"instances": [[1, 2, 3], [4, 5]]}"#, &specs);
        assert_contains(&msg, &["\"x\"", "each instance [3]", "instance 1", "found shape [2]", "expected 3"]);
        let specs = [spec("x", DatumType::F32, &[None, None])];
        let msg = err(r#"{"instances": [[1, 2, 3], [4, 5]]}"#, &specs);
        assert_contains(&msg, &["instance 1 has shape [2], but instance 0 has shape [3]"]);
        let msg = err(r#"{"instances": [[[1], [2, 3]]]}"#, &specs);
        assert_contains(&msg, &["instance 0", "not rectangular", "element [1] has 2 elements, but element [0] has 1"]);
    }

    #[test]
    fn wrong_rank() {
        let specs = [spec("image", DatumType::F32, &[None, Some(2), Some(2), Some(3)])];
        let msg = err(r#"{"inputs": [[1, 2, 3], [4, 5, 6]]}"#, &specs);
        assert_contains(&msg, &["input \"image\"", "f32 [?, 2, 2, 3]", "found shape [2, 3] (rank 2), expected rank 4"]);
        let msg = err(r#"{"inputs": 1}"#, &specs);
        assert_contains(&msg, &["found shape [] (rank 0), expected rank 4"]);
    }

    #[test]
    fn wrong_fixed_dim() {
        let specs = [spec("x", DatumType::F32, F32_N3)];
        let msg = err(r#"{"inputs": [[1, 2, 3, 4]]}"#, &specs);
        assert_contains(&msg, &["\"x\"", "f32 [?, 3]", "found shape [1, 4]", "dimension 1 is 4, expected 3"]);
        let msg = err(r#"{"instances": [[1, 2, 3, 4]]}"#, &specs);
        assert_contains(&msg, &["each instance [3]", "instance 0", "found shape [4]", "dimension 0 is 4, expected 3"]);
    }

    #[test]
    fn wrong_dtype() {
        let msg = err(r#"{"inputs": [1, "a"]}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["\"x\"", "f32 [?]", "element [1] is the string \"a\"", "expected a number"]);
        let msg = err(r#"{"inputs": [1, true]}"#, &[spec("x", DatumType::I32, &[None])]);
        assert_contains(&msg, &["i32 [?]", "element [1] is true, expected an integer"]);
        let msg = err(r#"{"inputs": [true, 1]}"#, &[spec("m", DatumType::Bool, &[None])]);
        assert_contains(&msg, &["\"m\"", "bool [?]", "element [1] is 1, expected true or false"]);
        let msg = err(r#"{"inputs": [1, null]}"#, &[spec("x", DatumType::F64, &[None])]);
        assert_contains(&msg, &["element [1] is null"]);
        let msg = err(r#"{"inputs": [{"a": 1}]}"#, &[spec("x", DatumType::F64, &[None])]);
        assert_contains(&msg, &["element [0] is an object"]);
    }

    #[test]
    fn float_for_integer_input() {
        let specs = [spec("ids", DatumType::I64, &[None])];
        let msg = err(r#"{"inputs": [1, 2.5]}"#, &specs);
        assert_contains(&msg, &["\"ids\"", "i64 [?]", "element [1] is 2.5, but i64 takes integers only"]);
        let msg = err(r#"{"inputs": [1.0]}"#, &specs);
        assert_contains(&msg, &["element [0] is 1.0, but i64 takes integers only"]);
        let msg = err(r#"{"instances": [1, 2, 3.5]}"#, &specs);
        assert_contains(&msg, &["instance 2: the value is 3.5", "integers only"]);
    }

    #[test]
    fn integer_out_of_range() {
        let msg = err(r#"{"inputs": [[1, 300]]}"#, &[spec("q", DatumType::I8, &[Some(1), Some(2)])]);
        assert_contains(&msg, &["\"q\"", "i8 [1, 2]", "element [0, 1] is 300", "out of range for i8 (-128..=127)"]);
        let msg = err(r#"{"inputs": [-1]}"#, &[spec("x", DatumType::U8, &[None])]);
        assert_contains(&msg, &["element [0] is -1", "out of range for u8 (0..=255)"]);
        let msg = err(r#"{"inputs": [-129]}"#, &[spec("x", DatumType::I8, &[None])]);
        assert_contains(&msg, &["out of range for i8"]);
        let msg = err(r#"{"inputs": [18446744073709551616]}"#, &[spec("x", DatumType::U64, &[None])]);
        assert_contains(&msg, &["out of range for u64"]);
        let msg = err(r#"{"inputs": [9223372036854775808]}"#, &[spec("x", DatumType::I64, &[None])]);
        assert_contains(&msg, &["out of range for i64"]);
        let msg = err(r#"{"inputs": [1e39]}"#, &[spec("x", DatumType::F32, &[None])]);
        assert_contains(&msg, &["element [0] is 1e+39", "out of range for f32"]);
    }

    #[test]
    fn ragged_body_promising_a_huge_shape_is_an_error_not_an_allocation() {
        // The first element at each level is [x, 0]: the probed shape is 2^100 elements.
        let mut inner = "0".to_string();
        for _ in 0..100 {
            inner = format!("[{inner}, 0]");
        }
        let specs = [spec("x", DatumType::F32, &[None])];
        let msg = err(&format!(r#"{{"inputs": {inner}}}"#), &specs);
        assert_contains(&msg, &["not rectangular"]);
        let msg = err(&format!(r#"{{"instances": [{inner}]}}"#), &specs);
        assert_contains(&msg, &["instance 0", "not rectangular"]);
    }

    #[test]
    fn structural_errors_win_over_value_errors() {
        let specs = [spec("x", DatumType::I8, &[Some(3)])];
        let msg = err(r#"{"inputs": [1000, 2]}"#, &specs);
        assert_contains(&msg, &["found shape [2]"]);
    }

    #[test]
    fn missing_and_unknown_input_names() {
        let specs = [spec("a", DatumType::F32, F32_N3), spec("b", DatumType::I64, &[None])];
        let msg = err(r#"{"inputs": {"a": [[1, 2, 3]]}}"#, &specs);
        assert_contains(&msg, &["missing input \"b\" (i64 [?])", "\"a\" (f32 [?, 3]), \"b\" (i64 [?])"]);
        let msg = err(r#"{"inputs": {"a": [[1, 2, 3]], "b": [1], "c": 1}}"#, &specs);
        assert_contains(&msg, &["unknown input \"c\"", "\"a\" (f32 [?, 3])"]);
        let msg = err(r#"{"instances": [{"a": [1, 2, 3], "b": 1}, {"a": [1, 2, 3]}]}"#, &specs);
        assert_contains(&msg, &["instance 1: missing input \"b\""]);
        let msg = err(r#"{"instances": [{"a": [1, 2, 3], "b": 1, "z": 0}]}"#, &specs);
        assert_contains(&msg, &["instance 0: unknown input \"z\""]);
        let single = [spec("x", DatumType::F32, &[None])];
        let msg = err(r#"{"inputs": {"y": [1]}}"#, &single);
        assert_contains(&msg, &["unknown input \"y\"", "\"x\" (f32 [?])"]);
    }

    #[test]
    fn multi_input_model_needs_objects() {
        let specs = [spec("a", DatumType::F32, F32_N3), spec("b", DatumType::I64, &[None])];
        let msg = err(r#"{"inputs": [[1, 2, 3]]}"#, &specs);
        assert_contains(&msg, &["2 inputs", "\"inputs\" must be an object", "found an array"]);
        let msg = err(r#"{"instances": [[1, 2, 3]]}"#, &specs);
        assert_contains(&msg, &["2 inputs", "each instance must be an object", "instance 0 is an array"]);
    }

    #[test]
    fn empty_or_non_array_instances() {
        let specs = [spec("x", DatumType::F32, F32_N3)];
        let msg = err(r#"{"instances": []}"#, &specs);
        assert_contains(&msg, &["\"instances\" must be a non-empty array", "found an empty array"]);
        let msg = err(r#"{"instances": {"x": [1, 2, 3]}}"#, &specs);
        assert_contains(&msg, &["\"instances\" must be a non-empty array", "found an object"]);
    }

    #[test]
    fn scalar_input_in_row_form() {
        let msg = err(r#"{"instances": [1]}"#, &[spec("t", DatumType::F32, &[])]);
        assert_contains(&msg, &["\"t\"", "f32 []", "scalar", "no batch axis", "\"inputs\""]);
    }

    #[test]
    fn unsupported_input_dtype() {
        let msg = err(r#"{"inputs": ["a"]}"#, &[spec("s", DatumType::String, &[None])]);
        assert_contains(&msg, &["\"s\"", "String", "cannot be sent as JSON"]);
    }

    // --- responses ---

    #[test]
    fn columnar_response_single_and_named() {
        let out = render(Form::Columnar, &["y"], &[tensor2(&[[1f32, 2.5], [-3.0, 0.1]])]);
        assert_eq!(out, r#"{"outputs":[[1.0,2.5],[-3.0,0.1]]}"#);
        let out = render(Form::Columnar, &["y", "k"], &[tensor1(&[1f32]), tensor0(3i64)]);
        assert_eq!(json(&out), json(r#"{"outputs": {"y": [1.0], "k": 3}}"#));
        assert_eq!(out, r#"{"outputs":{"y":[1.0],"k":3}}"#, "model order kept");
    }

    #[test]
    fn row_response_unstacks_batch() {
        let out = render(Form::Row, &["y"], &[tensor2(&[[1i32, 2], [3, 4], [5, 6]])]);
        assert_eq!(out, r#"{"predictions":[[1,2],[3,4],[5,6]]}"#);
        let out = render(Form::Row, &["y"], &[tensor1(&[0.5f32, 1.5])]);
        assert_eq!(out, r#"{"predictions":[0.5,1.5]}"#);
        let out = render(Form::Row, &["p", "c"], &[tensor2(&[[0.5f32, 0.5], [1.0, 0.0]]), tensor1(&[true, false])]);
        assert_eq!(
            json(&out),
            json(r#"{"predictions": [{"p": [0.5, 0.5], "c": true}, {"p": [1.0, 0.0], "c": false}]}"#)
        );
    }

    #[test]
    fn response_with_empty_dims() {
        let t = Tensor::zero::<f32>(&[2, 0, 3]).unwrap();
        assert_eq!(render(Form::Columnar, &["y"], std::slice::from_ref(&t)), r#"{"outputs":[[],[]]}"#);
        assert_eq!(render(Form::Row, &["y"], &[t]), r#"{"predictions":[[],[]]}"#);
        let t = Tensor::zero::<f32>(&[0, 3]).unwrap();
        assert_eq!(render(Form::Row, &["y"], &[t]), r#"{"predictions":[]}"#);
    }

    #[test]
    fn non_finite_floats_are_strings() {
        let out = render(Form::Columnar, &["y"], &[tensor1(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0])]);
        assert_eq!(out, r#"{"outputs":["NaN","Infinity","-Infinity",1.0]}"#);
        let out = render(Form::Columnar, &["y"], &[tensor1(&[f16::from_f32(f32::NAN), f16::from_f32(0.5)])]);
        assert_eq!(out, r#"{"outputs":["NaN",0.5]}"#);
        let out = render(Form::Columnar, &["y"], &[tensor0(f64::NEG_INFINITY)]);
        assert_eq!(out, r#"{"outputs":"-Infinity"}"#);
    }

    #[test]
    fn output_names_are_escaped() {
        let out = render(Form::Columnar, &["a\"b", "c"], &[tensor0(1u8), tensor0(2u8)]);
        assert_eq!(json(&out), json(r#"{"outputs": {"a\"b": 1, "c": 2}}"#));
    }

    #[test]
    fn row_response_errors() {
        let e = render_response(Form::Row, &["y"], &[tensor0(1f32)]).unwrap_err();
        assert!(!e.is_client_error());
        assert_contains(&e.to_string(), &["output \"y\" is a scalar"]);
        let e = render_response(Form::Row, &["a", "b"], &[tensor1(&[1f32, 2.0]), tensor1(&[1f32])]).unwrap_err();
        assert_contains(&e.to_string(), &["output \"b\" has batch size 1", "output \"a\" has 2"]);
        let e = render_response(Form::Row, &[], &[]).unwrap_err();
        assert_contains(&e.to_string(), &["no outputs"]);
        let e = render_response(Form::Columnar, &["a"], &[]).unwrap_err();
        assert_contains(&e.to_string(), &["1 output names for 0 outputs"]);
        let e = render_response(Form::Columnar, &["s"], &[tensor0("x".to_string())]).unwrap_err();
        assert_contains(&e.to_string(), &["output \"s\"", "String"]);
    }

    // --- round trips ---

    /// Parses `body` for one input, renders the tensor back as the model's single output, and
    /// checks the response carries the same values.
    fn round_trip(dtype: DatumType, shape: &[Option<usize>], body: &str, want: Value) {
        let specs = [spec("x", dtype, shape)];
        let (form, tensors) = parse(body, &specs).unwrap();
        assert_eq!(tensors[0].datum_type(), dtype);
        let out = render(form, &["x"], &tensors);
        assert_eq!(json(&out), want, "{body} -> {out}");
    }

    #[test]
    fn round_trip_f32() {
        round_trip(
            DatumType::F32,
            &[None, Some(2)],
            r#"{"inputs": [[0.1, -2], ["NaN", 3.25e-5]]}"#,
            json(r#"{"outputs": [[0.1, -2.0], ["NaN", 3.25e-5]]}"#),
        );
        round_trip(
            DatumType::F32,
            &[None, Some(2)],
            r#"{"instances": [[0.1, -2], ["Infinity", 1]]}"#,
            json(r#"{"predictions": [[0.1, -2.0], ["Infinity", 1.0]]}"#),
        );
    }

    #[test]
    fn round_trip_i8() {
        round_trip(
            DatumType::I8,
            &[Some(1), None],
            r#"{"inputs": [[-128, 0, 127]]}"#,
            json(r#"{"outputs": [[-128, 0, 127]]}"#),
        );
        round_trip(DatumType::I8, &[None], r#"{"instances": [-5, 5]}"#, json(r#"{"predictions": [-5, 5]}"#));
    }

    #[test]
    fn round_trip_u8() {
        let body = r#"{"instances": [[[0, 1], [2, 255]], [[9, 8], [7, 6]]]}"#;
        round_trip(
            DatumType::U8,
            &[None, Some(2), Some(2)],
            body,
            json(r#"{"predictions": [[[0, 1], [2, 255]], [[9, 8], [7, 6]]]}"#),
        );
    }

    #[test]
    fn round_trip_i64() {
        round_trip(
            DatumType::I64,
            &[None],
            r#"{"inputs": [-9223372036854775808, 0, 9223372036854775807]}"#,
            json(r#"{"outputs": [-9223372036854775808, 0, 9223372036854775807]}"#),
        );
    }

    #[test]
    fn round_trip_bool() {
        round_trip(
            DatumType::Bool,
            &[None, Some(2)],
            r#"{"instances": [[true, false], [false, false]]}"#,
            json(r#"{"predictions": [[true, false], [false, false]]}"#),
        );
        round_trip(DatumType::Bool, &[], r#"{"inputs": true}"#, json(r#"{"outputs": true}"#));
    }

    #[test]
    fn round_trip_multi_input_row() {
        let specs = [spec("a", DatumType::F32, &[None]), spec("b", DatumType::I64, &[None, Some(2)])];
        let body = r#"{"instances": [{"a": 1.5, "b": [1, 2]}, {"a": -1, "b": [3, 4]}]}"#;
        let (form, t) = parse(body, &specs).unwrap();
        let out = render(form, &["a", "b"], &t);
        assert_eq!(json(&out), json(r#"{"predictions": [{"a": 1.5, "b": [1, 2]}, {"a": -1.0, "b": [3, 4]}]}"#));
    }

    #[test]
    fn large_image_input() {
        let (h, w, c) = (256usize, 256usize, 3usize);
        let mut body = String::with_capacity(h * w * c * 8);
        body.push_str("{\"inputs\": [[");
        for y in 0..h {
            body.push_str(if y == 0 { "[" } else { ",[" });
            for x in 0..w {
                body.push_str(if x == 0 { "[" } else { ",[" });
                for k in 0..c {
                    if k > 0 {
                        body.push(',');
                    }
                    write!(body, "{}", ((y * w + x) * c + k) % 251).unwrap();
                    body.push_str(".5");
                }
                body.push(']');
            }
            body.push(']');
        }
        body.push_str("]]}");
        let shape = [None, Some(h), Some(w), Some(c)];
        let specs = [spec("image", DatumType::F32, &shape)];
        let (form, t) = parse(&body, &specs).unwrap();
        assert_eq!(form, Form::Columnar);
        assert_eq!(t[0].shape(), &[1, h, w, c]);
        let data = t[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert_eq!(data.len(), h * w * c);
        for (i, v) in data.iter().enumerate().step_by(997) {
            assert_eq!(*v, (i % 251) as f32 + 0.5);
        }
        let out = render(form, &["image"], &t);
        assert_eq!(json(&out)["outputs"][0][255][255][2], json(&format!("{}.5", (h * w * c - 1) % 251)));
    }
}
