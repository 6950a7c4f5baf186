//! The Open Inference Protocol's `"data"`: one input's elements given apart from its
//! shape, flat or nested, parsed straight into the tensor's buffer by the same walk as a
//! predict's values ([`super::values`]), after the stated shape's element count is checked
//! against the text's length.

use serde_json::value::RawValue;
use tract_core::internal::*;

use super::request::run;
use super::values::{elements_for, Walk};
use super::{fmt_dims, fmt_path, input_err, InputSpec, JsonError};

/// Reads one input's elements given apart from its shape, as the Open Inference Protocol
/// sends them (`"shape"` beside `"data"`): `value` holds the elements either flat, in C
/// order, or nested as `shape`. `shape` must already fit the model's; the leaves follow the
/// same dtype rules as a predict request's. A shape that claims more elements than the
/// text has characters is refused before anything is allocated.
pub fn parse_data(spec: &InputSpec, shape: &[usize], value: &RawValue) -> Result<Tensor, JsonError> {
    let err = |problem| input_err(spec, false, problem);
    let Some(elements) = elements_for(spec.dtype) else {
        return Err(err(format!("the model's dtype {:?} cannot be sent as JSON", spec.dtype)));
    };
    let text = value.get();
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    // Every element takes at least one character of the text.
    let Some(count) = count.filter(|c| *c <= text.len()) else {
        return Err(err(format!(
            "\"shape\" {} claims {} elements, but \"data\" is only {} characters long",
            fmt_dims(shape),
            count.map_or_else(|| "more than memory holds".to_string(), |c| c.to_string()),
            text.len()
        )));
    };
    // Flat or nested: the walk cannot hold values to one shape; the text's length bounds it.
    let mut walk = Walk::new(elements, None);
    walk.elements.reserve(count);
    walk.begin();
    run(text, walk.seed()).map_err(|e| match walk.broken.take() {
        Some(why) => err(why),
        None => JsonError::Syntax(e),
    })?;
    // A lone scalar is the flat form of a one-element tensor.
    let scalar = !text.starts_with('[');
    let found = if scalar { vec![1] } else { walk.shape() };
    let flat = found.len() == 1 && found[0] == count;
    if found != shape && !flat {
        return Err(err(format!(
            "\"data\" has shape {} ({} elements), but \"shape\" is {} ({count} elements); send the elements flat \
             in C order, or nested as \"shape\"",
            fmt_dims(&found),
            found.iter().product::<usize>(),
            fmt_dims(shape)
        )));
    }
    if let Some((path, problem)) = walk.bad.take() {
        let path = if scalar {
            "element 0".to_string()
        } else if flat && found != shape {
            format!("element {}", path[0])
        } else {
            fmt_path(&path)
        };
        return Err(err(format!("{path} is {problem}")));
    }
    walk.elements.into_tensor(shape).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn data_flat_nested_or_scalar() {
        let sp = spec("x", DatumType::F32, F32_N3);
        let want = tensor2(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(parse_data(&sp, &[2, 3], &raw("[1, 2, 3, 4, 5, 6]")).unwrap(), want);
        assert_eq!(parse_data(&sp, &[2, 3], &raw("[[1, 2, 3], [4, 5, 6]]")).unwrap(), want);
        let one = spec("y", DatumType::I64, &[]);
        assert_eq!(parse_data(&one, &[], &raw("7")).unwrap(), tensor0(7i64));
    }

    #[test]
    fn data_count_or_shape_mismatch_names_both() {
        let sp = spec("x", DatumType::F32, F32_N3);
        let msg = parse_data(&sp, &[2, 3], &raw("[1, 2, 3]")).unwrap_err().to_string();
        assert_contains(&msg, &["\"x\"", "[3] (3 elements)", "[2, 3] (6 elements)"]);
        let msg = parse_data(&sp, &[2, 3], &raw("[[1, 2], [3, 4], [5, 6]]")).unwrap_err().to_string();
        assert_contains(&msg, &["[3, 2]", "[2, 3]"]);
        let msg = parse_data(&sp, &[1, 3], &raw(r#"[1, "x", 3]"#)).unwrap_err().to_string();
        assert_contains(&msg, &["element 1", "\"x\"", "expected a number"]);
    }
}
