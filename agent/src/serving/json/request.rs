//! Reading a predict request's top level: which form it uses (`"inputs"` or `"instances"`),
//! which value belongs to which model input, and stacking row-form instances along the batch
//! axis. The walk over one value's nested arrays is [`super::values`]'s job; this file
//! decides what is walked and words the errors that name an input and what the model
//! expects of it.
//!
//! The top level is read as borrowed slices of the body ([`RawValue`]): its keys are
//! checked before any tensor is parsed, and nothing is copied. The tensors are then parsed
//! from those slices by serde visitors that feed each value (or each instance's value) to
//! its input's walk as the parser meets it: neither the instances nor the values are
//! collected first.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tract_core::internal::*;

use super::values::{check_shape, elements_for, Leaf, Node, Walk};
use super::{describe, expected, fmt_dims, fmt_path, input_err, list_specs, Form, InputSpec, JsonError};

/// Parses a request body into one tensor per model input, in `specs` order.
pub fn parse_request(body: &[u8], specs: &[InputSpec]) -> Result<(Form, Vec<Tensor>), JsonError> {
    let root: &RawValue = serde_json::from_slice(body).map_err(JsonError::Syntax)?;
    if !root.get().starts_with('{') {
        return Err(JsonError::Request(format!(
            "the request must be a JSON object with \"inputs\" or \"instances\"; found {}",
            describe(root)
        )));
    }
    let mut fail = None;
    let top = run(root.get(), TopSeed { fail: &mut fail }).map_err(|e| fail.take().unwrap_or(JsonError::Syntax(e)))?;
    let mut ctx = Ctx::new(specs, top.instances.is_some())?;
    match (top.inputs, top.instances) {
        (Some(_), Some(_)) => {
            Err(JsonError::Request("the request has both \"inputs\" and \"instances\"; send exactly one".to_string()))
        }
        (None, None) => Err(JsonError::Request(
            "the request has neither \"inputs\" (columnar form) nor \"instances\" (row form)".to_string(),
        )),
        (Some(inputs), None) => {
            parse_columnar(inputs, &mut ctx)?;
            Ok((Form::Columnar, ctx.tensors(None)?))
        }
        (None, Some(instances)) => {
            let count = parse_rows(instances, &mut ctx)?;
            Ok((Form::Row, ctx.tensors(Some(count))?))
        }
    }
}

/// Runs `seed` over a whole JSON text.
pub(super) fn run<'de, S: DeserializeSeed<'de>>(text: &'de str, seed: S) -> Result<S::Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Stops the parser with `e`, kept in `fail`: serde's errors carry only text.
fn stop<E: de::Error>(fail: &mut Option<JsonError>, e: JsonError) -> E {
    *fail = Some(e);
    E::custom("stopped")
}

/// The request's top level, as slices of the body.
#[derive(Default)]
struct Top<'de> {
    inputs: Option<&'de RawValue>,
    instances: Option<&'de RawValue>,
}

struct TopSeed<'f> {
    fail: &'f mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Top<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Top<'de>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a predict request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "inputs" => top.inputs = Some(map.next_value()?),
                "instances" => top.instances = Some(map.next_value()?),
                "signature_name" => {
                    let sig: &RawValue = map.next_value()?;
                    if !sig.get().starts_with('"') {
                        let found = describe(sig);
                        return Err(stop(
                            self.fail,
                            JsonError::Request(format!("\"signature_name\" must be a string; found {found}")),
                        ));
                    }
                }
                _ => {
                    return Err(stop(
                        self.fail,
                        JsonError::Request(format!(
                            "unknown key \"{key}\" in the request; expected \"inputs\" or \"instances\" \
                             (and optionally \"signature_name\")"
                        )),
                    ))
                }
            }
        }
        Ok(top)
    }
}

/// The inputs being parsed: one walk per model input, and what was found so far.
struct Ctx<'s, 'a> {
    specs: &'s [InputSpec<'a>],
    walks: Vec<Walk>,
    /// Columnar form: each input's shape. Row form: each input's first instance's shape.
    shapes: Vec<Option<Vec<usize>>>,
    /// An error found by a seed, which stopped the parser.
    fail: Option<JsonError>,
    /// Row form: the instance being read.
    instance: Option<usize>,
}

impl<'s, 'a> Ctx<'s, 'a> {
    /// Walks for `specs`; in the row form (`row`) their values are instances.
    fn new(specs: &'s [InputSpec<'a>], row: bool) -> Result<Self, JsonError> {
        let walks = specs
            .iter()
            .map(|s| {
                let fits = if row { s.shape.get(1..).unwrap_or_default() } else { s.shape };
                elements_for(s.dtype).map(|e| Walk::new(e, Some(fits.to_vec()))).ok_or_else(|| {
                    input_err(s, false, format!("the model's dtype {:?} cannot be sent as JSON", s.dtype))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Ctx { specs, walks, shapes: vec![None; specs.len()], fail: None, instance: None })
    }

    fn stop<E: de::Error>(&mut self, e: JsonError) -> E {
        stop(&mut self.fail, e)
    }

    /// The error behind a parser error: a seed's, a walk's (not rectangular), or the syntax.
    fn failure(&mut self, e: serde_json::Error) -> JsonError {
        if let Some(f) = self.fail.take() {
            return f;
        }
        let row = self.instance.is_some();
        for (walk, spec) in self.walks.iter_mut().zip(self.specs) {
            if let Some(why) = walk.broken.take() {
                let why = match self.instance {
                    Some(i) => format!("instance {i}: {why}"),
                    None => why,
                };
                return input_err(spec, row, why);
            }
        }
        JsonError::Syntax(e)
    }

    /// Checks input `k`'s whole value, just read.
    fn finish_whole<E: de::Error>(&mut self, k: usize) -> Result<(), E> {
        let spec = &self.specs[k];
        let shape = self.walks[k].shape();
        if let Err(p) = check_shape(spec.shape, &shape) {
            return Err(self.stop(input_err(spec, false, p)));
        }
        if let Some((path, problem)) = self.walks[k].bad.take() {
            return Err(self.stop(input_err(spec, false, format!("{} is {problem}", fmt_path(&path)))));
        }
        self.shapes[k] = Some(shape);
        Ok(())
    }

    /// Starts input `k`'s value in instance `i`: one beyond a fixed batch size is walked
    /// (the request is refused once they are counted) but not kept.
    fn begin_instance(&mut self, k: usize, i: usize) {
        self.walks[k].begin();
        self.walks[k].skip = self.specs[k].shape.first().copied().flatten().is_some_and(|b| i >= b);
    }

    /// Checks input `k`'s value in instance `i`, just read.
    fn finish_instance<E: de::Error>(&mut self, k: usize, i: usize) -> Result<(), E> {
        let spec = &self.specs[k];
        let shape = self.walks[k].shape();
        if let Err(p) = check_shape(&spec.shape[1..], &shape) {
            return Err(self.stop(input_err(spec, true, format!("instance {i}: {p}"))));
        }
        if let Some((path, problem)) = self.walks[k].bad.take() {
            let e = input_err(spec, true, format!("instance {i}: {} is {problem}", fmt_path(&path)));
            return Err(self.stop(e));
        }
        match &self.shapes[k] {
            None => self.shapes[k] = Some(shape),
            Some(first) if *first != shape => {
                let e = input_err(
                    spec,
                    true,
                    format!(
                        "instance {i} has shape {}, but instance 0 has shape {}; all instances must have the same \
                         shape",
                        fmt_dims(&shape),
                        fmt_dims(first)
                    ),
                );
                return Err(self.stop(e));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Reads a map of input names to values (`what` names it in messages); `instance` is
    /// the row form's instance index.
    fn named<'de, A: MapAccess<'de>>(
        &mut self,
        mut map: A,
        what: &str,
        instance: Option<usize>,
    ) -> Result<(), A::Error> {
        let mut seen = vec![false; self.specs.len()];
        while let Some(key) = map.next_key::<String>()? {
            let Some(k) = self.specs.iter().position(|s| s.name == key) else {
                let e = format!("{what}: unknown input \"{key}\"; the model's inputs are {}", list_specs(self.specs));
                return Err(self.stop(JsonError::Request(e)));
            };
            if std::mem::replace(&mut seen[k], true) {
                return Err(self.stop(JsonError::Request(format!("{what}: input \"{key}\" is given twice"))));
            }
            match instance {
                Some(i) => self.begin_instance(k, i),
                None => self.walks[k].begin(),
            }
            map.next_value_seed(self.walks[k].seed())?;
            match instance {
                Some(i) => self.finish_instance(k, i)?,
                None => self.finish_whole(k)?,
            }
        }
        if let Some(missing) = self.specs.iter().zip(&seen).find(|(_, seen)| !**seen).map(|(s, _)| s) {
            let e = format!(
                "{what}: missing input \"{}\" ({}); the model's inputs are {}",
                missing.name,
                expected(missing),
                list_specs(self.specs)
            );
            return Err(self.stop(JsonError::Request(e)));
        }
        Ok(())
    }

    /// The tensors; `batch` is the number of instances in the row form.
    fn tensors(self, batch: Option<usize>) -> Result<Vec<Tensor>, JsonError> {
        let mut out = Vec::with_capacity(self.walks.len());
        for ((walk, spec), shape) in self.walks.into_iter().zip(self.specs).zip(self.shapes) {
            let mut shape = shape.unwrap_or_default();
            if let Some(count) = batch {
                if let Some(b) = spec.shape[0].filter(|b| *b != count) {
                    return Err(input_err(
                        spec,
                        true,
                        format!(
                            "the model takes a batch of exactly {b}, so \"instances\" must hold exactly {b} \
                             instance{}; found {count}",
                            if b == 1 { "" } else { "s" }
                        ),
                    ));
                }
                shape.insert(0, count);
            }
            out.push(walk.elements.into_tensor(&shape).map_err(|p| input_err(spec, false, p))?);
        }
        Ok(out)
    }
}

fn parse_columnar(inputs: &RawValue, ctx: &mut Ctx) -> Result<(), JsonError> {
    let text = inputs.get();
    let result = if text.starts_with('{') {
        run(text, Named(ctx))
    } else if ctx.specs.len() == 1 {
        ctx.walks[0].begin();
        run(text, ctx.walks[0].seed()).and_then(|()| ctx.finish_whole::<serde_json::Error>(0))
    } else {
        return Err(JsonError::Request(format!(
            "the model has {} inputs ({}), so \"inputs\" must be an object mapping each input name to its \
             tensor; found {}",
            ctx.specs.len(),
            list_specs(ctx.specs),
            describe(inputs)
        )));
    };
    result.map_err(|e| ctx.failure(e))
}

/// `"inputs": {"name": value, ...}`.
struct Named<'c, 's, 'a>(&'c mut Ctx<'s, 'a>);

impl<'de> DeserializeSeed<'de> for Named<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Named<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of inputs")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.named(map, "\"inputs\"", None)
    }
}

/// Returns the number of instances.
fn parse_rows(instances: &RawValue, ctx: &mut Ctx) -> Result<usize, JsonError> {
    let found = describe(instances);
    if !instances.get().starts_with('[') || found == "an empty array" {
        return Err(JsonError::Request(format!("\"instances\" must be a non-empty array of instances; found {found}")));
    }
    if let Some(scalar) = ctx.specs.iter().find(|s| s.shape.is_empty()) {
        return Err(input_err(
            scalar,
            true,
            "the input is a scalar, which has no batch axis to stack instances along; send it with \"inputs\""
                .to_string(),
        ));
    }
    run(instances.get(), Rows(ctx)).map_err(|e| ctx.failure(e))
}

/// `"instances": [...]`.
struct Rows<'c, 's, 'a>(&'c mut Ctx<'s, 'a>);

impl<'de> DeserializeSeed<'de> for Rows<'_, '_, '_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<usize, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_, '_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of instances")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut i = 0;
        loop {
            self.0.instance = Some(i);
            if seq.next_element_seed(Instance(&mut *self.0, i))?.is_none() {
                return Ok(i);
            }
            i += 1;
        }
    }
}

/// Instance `.1` of the row form: an object of input values, or (single-input model) the
/// input's value itself.
struct Instance<'c, 's, 'a>(&'c mut Ctx<'s, 'a>, usize);

impl Instance<'_, '_, '_> {
    /// Feeds a value that is not an object to the only input's walk.
    fn single<E: de::Error>(self, found: &str, feed: impl FnOnce(Node) -> Result<(), E>) -> Result<(), E> {
        let (ctx, i) = (self.0, self.1);
        if ctx.specs.len() != 1 {
            let e = format!(
                "the model has {} inputs ({}), so each instance must be an object mapping each input name to its \
                 value; instance {i} is {found}",
                ctx.specs.len(),
                list_specs(ctx.specs)
            );
            return Err(ctx.stop(JsonError::Request(e)));
        }
        ctx.begin_instance(0, i);
        feed(ctx.walks[0].seed())?;
        ctx.finish_instance(0, i)
    }
}

impl<'de> DeserializeSeed<'de> for Instance<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Instance<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an instance")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let i = self.1;
        self.0.named(map, &format!("instance {i}"), Some(i))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.single("an array", |n| n.visit_seq(seq))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.single(&Leaf::U64(v).describe(), |n| n.visit_u64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.single(&Leaf::I64(v).describe(), |n| n.visit_i64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.single(&Leaf::F64(v).describe(), |n| n.visit_f64(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.single(&Leaf::Bool(v).describe(), |n| n.visit_bool(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.single(&Leaf::Str(v).describe(), |n| n.visit_str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.single("null", |n| n.visit_unit())
    }
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
}
