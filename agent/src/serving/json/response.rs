//! Writing a predict response: the outputs as JSON text, written directly into the body
//! (no intermediate `serde_json::Value`), either whole (`{"outputs": ...}`) or unstacked
//! along the batch axis into one prediction per instance (`{"predictions": [...]}`).

use tract_core::internal::*;

use super::{Form, JsonError};

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

/// Writes a tensor's elements as one flat JSON array in C order, as the Open Inference
/// Protocol's `"data"` carries them; floats follow the same rules as predict responses.
pub fn write_flat(out: &mut Vec<u8>, name: &str, t: &Tensor) -> Result<(), JsonError> {
    write_slice(out, name, t, &[t.len()], 0..t.len())
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
    write_slice(out, name, t, shape, range)
}

/// Writes the elements `range` of `t` as nested arrays of `shape`.
fn write_slice(
    out: &mut Vec<u8>,
    name: &str,
    t: &Tensor,
    shape: &[usize],
    range: std::ops::Range<usize>,
) -> Result<(), JsonError> {
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
    use super::super::testing::*;
    use super::*;

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
}
