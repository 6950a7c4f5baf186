//! Reading a predict request's top level: which form it uses (`"inputs"` or `"instances"`),
//! which value belongs to which model input, and stacking row-form instances along the batch
//! axis. The walk over one value's nested arrays is [`super::values`]'s job; this file
//! decides what is walked and words the errors that name an input and what the model
//! expects of it.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tract_core::internal::*;

use super::values::{bool_leaf, check_shape, float_leaf, int_leaf, Leaf, Walk};
use super::{describe, fmt_dims, fmt_path, Form, InputSpec, JsonError};

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

/// Reads one input's elements given apart from its shape, as the Open Inference Protocol
/// sends them (`"shape"` beside `"data"`): `value` holds the elements either flat, in C
/// order, or nested as `shape`. `shape` must already fit the model's; the leaves follow the
/// same dtype rules as a predict request's.
pub fn parse_data(spec: &InputSpec, shape: &[usize], value: &Value) -> Result<Tensor, JsonError> {
    build_input(spec, Source::Data(value, shape))
}

/// Where one input's value comes from.
enum Source<'v> {
    /// The whole tensor (columnar form).
    Whole(&'v Value),
    /// One value per instance, to stack along a new batch axis (row form).
    Instances(Vec<&'v Value>),
    /// The elements, flat or nested, of a tensor whose shape the request states apart.
    Data(&'v Value, &'v [usize]),
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
    let mut walk = Walk::new(leaf);
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
        Source::Data(value, shape) => {
            let err = |problem| input_err(spec, false, problem);
            // A lone scalar is the flat form of a one-element tensor.
            let found = if value.is_array() {
                walk.value(value).map_err(err)?
            } else {
                walk.value(&Value::Array(vec![value.clone()])).map_err(err)?
            };
            let count = shape.iter().product::<usize>();
            let flat = found.len() == 1 && found[0] == count;
            if found != shape && !flat {
                return Err(err(format!(
                    "\"data\" has shape {} ({} elements), but \"shape\" is {} ({count} elements); send the \
                     elements flat in C order, or nested as \"shape\"",
                    fmt_dims(&found),
                    found.iter().product::<usize>(),
                    fmt_dims(shape)
                )));
            }
            if let Some((path, problem)) = walk.bad.take() {
                let path = if flat && found != shape { format!("element {}", path[0]) } else { fmt_path(&path) };
                return Err(err(format!("{path} is {problem}")));
            }
            shape.to_vec()
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

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

    // --- elements given beside their shape (Open Inference Protocol) ---

    #[test]
    fn data_flat_nested_or_scalar() {
        let sp = spec("x", DatumType::F32, F32_N3);
        let want = tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(parse_data(&sp, &[2, 3], &json("[1, 2, 3, 4, 5, 6]")).unwrap(), want);
        assert_eq!(parse_data(&sp, &[2, 3], &json("[[1, 2, 3], [4, 5, 6]]")).unwrap(), want);
        let one = spec("y", DatumType::I64, &[]);
        assert_eq!(parse_data(&one, &[], &json("7")).unwrap(), tensor0(7i64));
    }

    #[test]
    fn data_count_or_shape_mismatch_names_both() {
        let sp = spec("x", DatumType::F32, F32_N3);
        let msg = parse_data(&sp, &[2, 3], &json("[1, 2, 3]")).unwrap_err().to_string();
        assert_contains(&msg, &["\"x\"", "[3] (3 elements)", "[2, 3] (6 elements)"]);
        let msg = parse_data(&sp, &[2, 3], &json("[[1, 2], [3, 4], [5, 6]]")).unwrap_err().to_string();
        assert_contains(&msg, &["[3, 2]", "[2, 3]"]);
        let msg = parse_data(&sp, &[1, 3], &json(r#"[1, "x", 3]"#)).unwrap_err().to_string();
        assert_contains(&msg, &["element 1", "\"x\"", "expected a number"]);
    }
}
