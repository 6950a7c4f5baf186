//! One tensor value of a request: a single recursive walk over its nested arrays finds the
//! shape, checks that the arrays are rectangular, and converts each leaf to the input's dtype
//! straight into the tensor's buffer; the shape is then checked against the model's. Kept
//! apart from [`super::request`], which decides which value feeds which input, because this
//! is the part that sees every element and carries the dtype rules (number ranges, the
//! special float strings, integers only for integer inputs).

use serde_json::Value;

use super::{describe, fmt_dims, fmt_path};

/// Converts one JSON leaf to an element, or says what is wrong with it.
pub(super) type Leaf<T> = fn(&Value) -> Result<T, String>;

/// Most elements reserved up front for one tensor value; more grow the buffer as usual.
const MAX_RESERVE: usize = 1 << 20;

/// One pass over nested arrays: checks they are rectangular and collects the converted leaves.
pub(super) struct Walk<T> {
    leaf: Leaf<T>,
    /// Elements so far, in C order (all instances, one after the other).
    pub(super) data: Vec<T>,
    /// Index of the current element at each depth.
    path: Vec<usize>,
    /// The first leaf that did not convert: where, and what was wrong with it. Reported after
    /// the shape, so that a structural error wins over a value error.
    pub(super) bad: Option<(Vec<usize>, String)>,
}

impl<T: Default> Walk<T> {
    pub(super) fn new(leaf: Leaf<T>) -> Self {
        Walk { leaf, data: Vec::new(), path: Vec::new(), bad: None }
    }

    /// Walks one tensor value and returns its shape.
    pub(super) fn value(&mut self, value: &Value) -> Result<Vec<usize>, String> {
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
pub(super) fn check_shape(spec: &[Option<usize>], found: &[usize]) -> Result<(), String> {
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

pub(super) fn float_leaf<T: Copy>(
    value: &Value,
    dtype: &str,
    cast: fn(f64) -> T,
    is_inf: fn(T) -> bool,
) -> Result<T, String> {
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

pub(super) fn int_leaf<T>(value: &Value) -> Result<T, String>
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

pub(super) fn bool_leaf(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("{}, expected true or false", describe(other))),
    }
}

/// Names and bounds of the integer dtypes, for messages.
pub(super) trait IntRange {
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

#[cfg(test)]
mod tests {
    use tract_core::internal::*;

    use super::super::testing::*;

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
}
