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
//! Parsing builds no [`serde_json::Value`] tree: the top level is read as borrowed slices of
//! the body ([`RawValue`]), and each input's nested arrays are then parsed in a single pass
//! that checks rectangularity, converts the leaves to the input dtype and collects them
//! straight into the tensor's buffer; rendering writes the JSON text directly. Memory is
//! the elements themselves, whatever the body claims.
//!
//! # Layout
//!
//! - `request`: the request's top level: which form, which input gets which value, and
//!   the messages that name an input and what the model expects of it;
//! - `values`: one tensor value: the single walk over nested arrays that finds its shape,
//!   checks it is rectangular and fits the model's, and converts the leaves to the dtype;
//! - `data`: the Open Inference Protocol's `"data"`, elements beside a stated shape;
//! - `response`: writing the outputs as JSON text, whole or unstacked into predictions.
//!
//! The Open Inference Protocol routes ([`super::v2`]) reuse the value walk and the writer
//! for its `"data"` fields: [`parse_data`] reads elements given flat or nested beside a
//! stated shape (checked against the text's length before anything is allocated), [`write_flat`] writes a tensor's elements as one flat array.
//!
//! This file holds what they share: the types of the public API and the wording for JSON
//! values, shapes and positions inside a value. The round-trip tests live here too, as they
//! exercise both directions.

mod data;
mod request;
mod response;
mod values;

pub use data::parse_data;
pub use request::parse_request;
pub use response::{render_response, write_flat};

use std::fmt::Write as _;

use serde_json::value::RawValue;
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

// ---------------------------------------------------------------------------------------------
// Wording shared by the request and value checks

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

/// A short description of a JSON value for messages, from its text: the value itself for
/// scalars.
fn describe(raw: &RawValue) -> String {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'[') if text[1..text.len() - 1].trim().is_empty() => "an empty array".to_string(),
        Some(b'[') => "an array".to_string(),
        Some(b'{') => "an object".to_string(),
        Some(b'"') => serde_json::from_str::<String>(text).map_or_else(|_| text.to_string(), |s| describe_str(&s)),
        _ => text.to_string(),
    }
}

/// A string as messages show it: at most 32 characters of it.
fn describe_str(s: &str) -> String {
    if s.chars().count() <= 32 {
        format!("the string {s:?}")
    } else {
        format!("the string {:?}...", s.chars().take(32).collect::<String>())
    }
}

pub(super) fn input_err(spec: &InputSpec, row: bool, problem: String) -> JsonError {
    let mut expected = expected(spec);
    if row && !spec.shape.is_empty() {
        let _ = write!(expected, ", each instance {}", fmt_spec_dims(&spec.shape[1..]));
    }
    JsonError::Input { name: spec.name.to_string(), expected, problem }
}

/// `f32 [?, 224, 224, 3]`.
pub(super) fn expected(spec: &InputSpec) -> String {
    format!("{} {}", dtype_name(spec.dtype), fmt_spec_dims(spec.shape))
}

/// `"a" (f32 [?, 3]), "b" (i64 [?])`, or `none` for a model without inputs.
pub(super) fn list_specs(specs: &[InputSpec]) -> String {
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

/// Helpers for the tests of this module and its submodules.
#[cfg(test)]
mod testing {
    use serde_json::Value;

    use super::*;

    pub(super) fn spec<'a>(name: &'a str, dtype: DatumType, shape: &'a [Option<usize>]) -> InputSpec<'a> {
        InputSpec { name, dtype, shape }
    }

    pub(super) fn parse(body: &str, specs: &[InputSpec]) -> Result<(Form, Vec<Tensor>), JsonError> {
        parse_request(body.as_bytes(), specs)
    }

    /// The error message for a request that must fail.
    pub(super) fn err(body: &str, specs: &[InputSpec]) -> String {
        match parse(body, specs) {
            Ok((form, t)) => panic!("{body} parsed as {form:?} {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    pub(super) fn assert_contains(msg: &str, parts: &[&str]) {
        for p in parts {
            assert!(msg.contains(p), "{msg:?} does not contain {p:?}");
        }
    }

    pub(super) fn render(form: Form, names: &[&str], outputs: &[Tensor]) -> String {
        String::from_utf8(render_response(form, names, outputs).unwrap()).unwrap()
    }

    pub(super) fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    pub(super) fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    pub(super) const F32_N3: &[Option<usize>] = &[None, Some(3)];
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use serde_json::Value;

    use super::testing::*;
    use super::*;

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
