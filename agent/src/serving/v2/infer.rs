//! The bodies of an Open Inference Protocol inference: decoding a request into one tensor
//! per model input, and encoding the outputs.
//!
//! # Request
//!
//! `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data" | "parameters":
//! {"binary_data_size": K}}], "outputs"?: [{"name", "parameters"?: {"binary_data": bool}}]}`.
//!
//! - Every model input comes exactly once, by name, in any order; its `datatype` must be the
//!   model's and its `shape` must fit (same rank, fixed dimensions equal).
//! - `data` holds the elements flat in C order or nested as `shape` (the leaves follow the
//!   TF Serving routes' rules, [`crate::serving::json::parse_data`]).
//! - With the `binary_tensor_data` extension the body is a JSON header of
//!   `Inference-Header-Content-Length` bytes followed by the binary inputs, in the order the
//!   header lists them, each `binary_data_size` bytes of little-endian elements; the sizes
//!   must account for every byte after the header.
//!
//! # Response
//!
//! `{"model_name", "model_version", "id"?, "outputs": [{"name", "datatype", "shape", "data"}]}`,
//! `data` flat. The outputs are the ones `outputs` asks for, in its order, or all of them.
//! An output is binary (no `data`; `"parameters": {"binary_data_size": K}` and its bytes after
//! the JSON, whose length the response's `Inference-Header-Content-Length` gives) when its
//! request entry says `"binary_data": true`, or, for one without a say, when the request's
//! `parameters` hold `"binary_data_output": true`. tritonclient sends the latter whenever
//! the caller names no outputs.

use serde::Deserialize;
use serde_json::value::RawValue;
use tract_core::internal::*;

use super::datatype;
use crate::engine::TensorSpec;
use crate::npy;
use crate::serving::json::{parse_data, write_flat, InputSpec};

/// Why a request could not be decoded, or its outputs not encoded.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request is at fault (HTTP 400); the text says what to change.
    #[error("{0}")]
    Request(String),
    /// An output cannot be carried by the protocol (HTTP 500).
    #[error("{0}")]
    Output(String),
}

fn bad(msg: impl Into<String>) -> InferError {
    InferError::Request(msg.into())
}

// The request is read without a `serde_json::Value` tree: `data` stays a slice of the body
// until the input's shape and dtype are known (then it is parsed straight into the tensor),
// parameters keep only the keys this agent reads, and lists are bounded.

#[derive(Debug, Deserialize)]
struct RequestBody<'a> {
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    inputs: Bounded<RequestInput<'a>, MAX_TENSORS>,
    #[serde(borrow)]
    outputs: Option<Bounded<RequestOutput<'a>, MAX_TENSORS>>,
}

#[derive(Debug, Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Bounded<i64, MAX_RANK>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

/// The `parameters` this agent reads, as the request's text; other keys are skipped.
#[derive(Debug, Default, Deserialize)]
struct Parameters<'a> {
    #[serde(borrow)]
    binary_data_output: Option<&'a RawValue>,
    #[serde(borrow)]
    binary_data: Option<&'a RawValue>,
    #[serde(borrow)]
    binary_data_size: Option<&'a RawValue>,
    #[serde(borrow)]
    shared_memory_region: Option<&'a RawValue>,
    #[serde(borrow)]
    classification: Option<&'a RawValue>,
}

/// Most inputs or outputs a request may list.
const MAX_TENSORS: usize = 1024;
/// Most dimensions a shape may have.
const MAX_RANK: usize = 64;

/// A list of at most `N` entries: a longer one is refused as it is read, not collected.
#[derive(Debug)]
struct Bounded<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Seq<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Seq<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an array of at most {N} entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    if out.len() == N {
                        return Err(serde::de::Error::custom(format!("more than {N} entries")));
                    }
                    out.push(x);
                }
                Ok(Bounded(out))
            }
        }
        de.deserialize_seq(Seq::<T, N>(std::marker::PhantomData))
    }
}

/// One output to send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Its index among the model's outputs.
    pub index: usize,
    /// Whether it goes as binary data after the JSON.
    pub binary: bool,
}

/// A decoded request.
#[derive(Debug)]
pub struct Decoded {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// One tensor per model input, in the model's order.
    pub inputs: Vec<Tensor>,
    /// The outputs to send back, in response order.
    pub outputs: Vec<Wanted>,
}

/// `FP32 [-1, 16, 96]`.
fn describe(s: &TensorSpec) -> String {
    let dims: Vec<String> = super::dims_or_minus_one(s).iter().map(i64::to_string).collect();
    format!("{} [{}]", datatype(s.datum_type()).unwrap_or("?"), dims.join(", "))
}

/// `"x" (FP32 [-1, 16, 96]), "y" (INT64 [1])`.
fn list(specs: &[TensorSpec]) -> String {
    if specs.is_empty() {
        "none".to_string()
    } else {
        specs.iter().map(|s| format!("\"{}\" ({})", s.name, describe(s))).collect::<Vec<_>>().join(", ")
    }
}

/// A boolean parameter, if present.
fn flag(value: Option<&RawValue>, key: &str, what: &str) -> Result<Option<bool>, InferError> {
    match value.map(|v| (v, serde_json::from_str::<bool>(v.get()))) {
        None => Ok(None),
        Some((_, Ok(b))) => Ok(Some(b)),
        Some((v, Err(_))) => Err(bad(format!("{what}: parameter \"{key}\" must be true or false; found {v}"))),
    }
}

/// Decodes a request body for a model with `inputs` and `outputs`; `header_length` is the
/// `Inference-Header-Content-Length` header, when the body carries binary tensors.
pub fn decode(
    body: &[u8],
    header_length: Option<usize>,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<Decoded, InferError> {
    let (json, mut binary) = match header_length {
        None => (body, &body[..0]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            )))
        }
    };
    let request: RequestBody = serde_json::from_slice(json).map_err(|e| {
        let trailing = std::str::from_utf8(json).is_err() || e.to_string().contains("trailing characters");
        let hint = if header_length.is_none() && trailing {
            " (binary tensors after the JSON need the Inference-Header-Content-Length header)"
        } else {
            ""
        };
        bad(format!("the request is not an inference request: {e}{hint}"))
    })?;

    let mut tensors: Vec<Option<Tensor>> = vec![None; inputs.len()];
    for input in &request.inputs.0 {
        let Some(index) = inputs.iter().position(|s| s.name == input.name) else {
            return Err(bad(format!("unknown input \"{}\"; the model's inputs are {}", input.name, list(inputs))));
        };
        if tensors[index].is_some() {
            return Err(bad(format!("input \"{}\" is given twice", input.name)));
        }
        tensors[index] = Some(input_tensor(input, &inputs[index], &mut binary, header_length.is_some())?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes after the JSON header belong to no input: the inputs' binary_data_size must add up to the \
             binary part of the body",
            binary.len()
        )));
    }
    let inputs_out = tensors
        .into_iter()
        .zip(inputs)
        .map(|(t, s)| {
            t.ok_or_else(|| bad(format!("missing input \"{}\"; the model's inputs are {}", s.name, list(inputs))))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let default_binary =
        flag(request.parameters.binary_data_output, "binary_data_output", "the request")?.unwrap_or(false);
    let wanted = match &request.outputs {
        None => (0..outputs.len()).map(|index| Wanted { index, binary: default_binary }).collect(),
        Some(list_) => list_
            .0
            .iter()
            .map(|o| {
                let what = format!("output \"{}\"", o.name);
                let index = outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| bad(format!("unknown {what}; the model's outputs are {}", list(outputs))))?;
                if o.parameters.shared_memory_region.is_some() || o.parameters.classification.is_some() {
                    return Err(bad(format!(
                        "{what}: shared memory and classification are not supported; ask for the tensor itself"
                    )));
                }
                let binary = flag(o.parameters.binary_data, "binary_data", &what)?.unwrap_or(default_binary);
                Ok(Wanted { index, binary })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Decoded { id: request.id, inputs: inputs_out, outputs: wanted })
}

/// One input's tensor, checked against the model's `spec`; binary data is taken from the
/// front of `binary`.
fn input_tensor(
    input: &RequestInput<'_>,
    spec: &TensorSpec,
    binary: &mut &[u8],
    header_sent: bool,
) -> Result<Tensor, InferError> {
    let what = format!("input \"{}\"", input.name);
    // Quantized inputs take their storage type (INT8, UINT8), as TF Serving's routes do.
    let dtype = spec.datum_type().unquantized();
    let want = datatype(dtype).unwrap_or("?");
    if input.datatype != want {
        return Err(bad(format!("{what}: datatype \"{}\", but the model takes {want}", input.datatype)));
    }
    let shape: Vec<usize> = input
        .shape
        .0
        .iter()
        .map(|d| usize::try_from(*d))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("{what}: shape {:?} has a negative dimension", input.shape.0)))?;
    let spec_dims: Vec<Option<usize>> = spec.shape.iter().map(|d| d.parse().ok()).collect();
    let fits = spec_dims.len() == shape.len() && spec_dims.iter().zip(&shape).all(|(w, g)| w.is_none_or(|w| w == *g));
    if !fits {
        return Err(bad(format!(
            "{what}: shape {:?}, but the model takes {} (-1: any size)",
            input.shape.0,
            describe(spec)
        )));
    }
    if input.parameters.shared_memory_region.is_some() {
        return Err(bad(format!("{what}: shared memory is not supported; send \"data\" or binary data")));
    }
    match (input.parameters.binary_data_size, input.data) {
        (Some(_), Some(_)) => Err(bad(format!("{what} has both \"data\" and \"binary_data_size\""))),
        (Some(size), None) => {
            let size = serde_json::from_str::<u64>(size.get())
                .ok()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad(format!("{what}: \"binary_data_size\" must be a byte count; found {size}")))?;
            if size > binary.len() {
                let why = if header_sent { "" } else { " (no Inference-Header-Content-Length header was sent)" };
                return Err(bad(format!(
                    "{what}: binary_data_size is {size}, but only {} bytes of binary data are left after the JSON \
                     header{why}",
                    binary.len()
                )));
            }
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            npy::from_le_bytes(dtype, &shape, bytes).map_err(|m| bad(format!("{what}: binary data: {m}")))
        }
        (None, Some(data)) => {
            let view = InputSpec { name: &spec.name, dtype, shape: &spec_dims };
            parse_data(&view, &shape, data).map_err(|e| bad(e.to_string()))
        }
        (None, None) => Err(bad(format!("{what} has neither \"data\" nor a \"binary_data_size\" parameter"))),
    }
}

/// Encodes the response: its body, and the JSON header's length when binary outputs follow
/// it (the value of the response's `Inference-Header-Content-Length`).
pub fn encode(
    model: &str,
    version: &str,
    id: Option<&str>,
    specs: &[TensorSpec],
    outputs: &[Tensor],
    wanted: &[Wanted],
) -> Result<(Vec<u8>, Option<usize>), InferError> {
    let str_json = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = Vec::with_capacity(128 + wanted.iter().map(|w| outputs[w.index].len() * 12).sum::<usize>());
    out.extend_from_slice(
        format!("{{\"model_name\":{},\"model_version\":{}", str_json(model), str_json(version)).as_bytes(),
    );
    if let Some(id) = id {
        out.extend_from_slice(format!(",\"id\":{}", str_json(id)).as_bytes());
    }
    out.extend_from_slice(b",\"outputs\":[");
    let mut binary: Vec<&[u8]> = vec![];
    for (i, w) in wanted.iter().enumerate() {
        let (name, t) = (&specs[w.index].name, &outputs[w.index]);
        let dt = datatype(t.datum_type()).ok_or_else(|| {
            InferError::Output(format!(
                "output \"{name}\" has dtype {:?}, which the protocol cannot carry",
                t.datum_type()
            ))
        })?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!("{{\"name\":{},\"datatype\":\"{dt}\",\"shape\":{:?}", str_json(name), t.shape()).as_bytes(),
        );
        if w.binary {
            let bytes =
                t.try_as_plain_ram().map_err(|e| InferError::Output(format!("output \"{name}\": {e}")))?.as_bytes();
            out.extend_from_slice(format!(",\"parameters\":{{\"binary_data_size\":{}}}}}", bytes.len()).as_bytes());
            binary.push(bytes);
        } else {
            out.extend_from_slice(b",\"data\":");
            write_flat(&mut out, name, t).map_err(|e| InferError::Output(e.to_string()))?;
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}");
    if binary.is_empty() {
        return Ok((out, None));
    }
    let json_len = out.len();
    binary.iter().for_each(|b| out.extend_from_slice(b));
    Ok((out, Some(json_len)))
}
