//! One tensor value of a request, parsed straight from the JSON text into the tensor's
//! buffer: a serde visitor walks the nested arrays as the parser meets them, finds the
//! shape, checks that the arrays are rectangular, and converts each leaf to the input's
//! dtype as it goes. No `serde_json::Value` tree is built: memory is the elements
//! themselves (the buffer grows with what arrives, never with what a body claims), and
//! nesting is bounded by serde_json's recursion limit (128). Kept apart from
//! [`super::request`], which decides which value feeds which input, because this is the
//! part that sees every element and carries the dtype rules (number ranges, the special
//! float strings, integers only for integer inputs).
//!
//! The shape is that of the first array at each depth (the first element's, all the way
//! down): every later array at that depth must have its length, and every leaf must sit at
//! the depth of the first one. An array that runs longer than its first sibling is counted
//! to its end without keeping its elements, so the message can say how long it was.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tract_core::internal::*;

use super::{fmt_dims, fmt_path};

/// One JSON leaf as the walk meets it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leaf<'a> {
    /// A non-negative integer.
    U64(u64),
    /// A negative integer.
    I64(i64),
    /// Any other number (serde_json reads integers beyond u64 as floats too).
    F64(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(&'a str),
    /// `null`.
    Null,
    /// An object, skipped.
    Object,
}

impl Leaf<'_> {
    /// A short description for messages: the value itself for scalars.
    pub(super) fn describe(&self) -> String {
        match self {
            Leaf::U64(n) => n.to_string(),
            Leaf::I64(n) => n.to_string(),
            Leaf::F64(x) => number(*x),
            Leaf::Bool(b) => b.to_string(),
            Leaf::Null => "null".to_string(),
            Leaf::Str(s) => super::describe_str(s),
            Leaf::Object => "an object".to_string(),
        }
    }
}

/// A float as JSON writes it (`1.0`, `1e+39`), as serde_json's own `Number` shows it.
fn number(x: f64) -> String {
    serde_json::Number::from_f64(x).map_or_else(|| x.to_string(), |n| n.to_string())
}

/// Converts one leaf to an element, or says what is wrong with it.
pub(super) type Convert<T> = fn(&Leaf) -> Result<T, String>;

/// The elements of one input, whatever their dtype.
pub(super) trait Elements: Send {
    /// Converts and appends a leaf; on error a placeholder is appended (the walk goes on,
    /// so that a structural error later in the value wins over this one).
    fn push(&mut self, leaf: &Leaf) -> Result<(), String>;
    /// Makes room for `n` more elements.
    fn reserve(&mut self, n: usize);
    /// The tensor of these elements in `shape`.
    fn into_tensor(self: Box<Self>, shape: &[usize]) -> Result<Tensor, String>;
}

struct Typed<T> {
    data: Vec<T>,
    convert: Convert<T>,
}

impl<T: Datum + Default> Elements for Typed<T> {
    fn push(&mut self, leaf: &Leaf) -> Result<(), String> {
        match (self.convert)(leaf) {
            Ok(x) => {
                self.data.push(x);
                Ok(())
            }
            Err(problem) => {
                self.data.push(T::default());
                Err(problem)
            }
        }
    }

    fn reserve(&mut self, n: usize) {
        self.data.reserve(n);
    }

    fn into_tensor(self: Box<Self>, shape: &[usize]) -> Result<Tensor, String> {
        tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(shape), self.data)
            .map(|a| a.into_tensor())
            .map_err(|e| format!("internal error building the tensor: {e}"))
    }
}

/// A buffer for elements of `dtype`, or `None` for a dtype JSON cannot carry.
pub(super) fn elements_for(dtype: DatumType) -> Option<Box<dyn Elements>> {
    use DatumType as D;
    fn typed<T: Datum + Default>(convert: Convert<T>) -> Option<Box<dyn Elements>> {
        Some(Box::new(Typed { data: Vec::new(), convert }))
    }
    match dtype {
        D::F16 => typed::<f16>(|v| float_leaf(v, "f16", f16::from_f64, |x: f16| x.is_infinite())),
        D::F32 => typed::<f32>(|v| float_leaf(v, "f32", |x| x as f32, f32::is_infinite)),
        D::F64 => typed::<f64>(|v| float_leaf(v, "f64", |x| x, f64::is_infinite)),
        D::I8 => typed::<i8>(int_leaf::<i8>),
        D::U8 => typed::<u8>(int_leaf::<u8>),
        D::I16 => typed::<i16>(int_leaf::<i16>),
        D::U16 => typed::<u16>(int_leaf::<u16>),
        D::I32 => typed::<i32>(int_leaf::<i32>),
        D::U32 => typed::<u32>(int_leaf::<u32>),
        D::I64 => typed::<i64>(int_leaf::<i64>),
        D::U64 => typed::<u64>(int_leaf::<u64>),
        D::Bool => typed::<bool>(bool_leaf),
        _ => None,
    }
}

/// The walk over one input's values: its elements so far (all instances, one after the
/// other, in C order) and the state of the value being read.
pub(super) struct Walk {
    /// The elements.
    pub(super) elements: Box<dyn Elements>,
    /// Length of the arrays at each depth, known once the first one has ended.
    dims: Vec<Option<usize>>,
    /// Depth of the leaves, known at the first leaf (or first empty array).
    rank: Option<usize>,
    /// Index of the current element at each depth.
    path: Vec<usize>,
    /// The first leaf that did not convert: where, and what was wrong with it. Reported after
    /// the shape, so that a structural error wins over a value error.
    pub(super) bad: Option<(Vec<usize>, String)>,
    /// Why the value is not rectangular; set when the walk stops the parser.
    pub(super) broken: Option<String>,
    /// The shape a value must have, when known: a leaf outside it is not kept, as the
    /// value is refused anyway once its shape is known. A body that sends more elements
    /// than the model takes costs parsing time, never memory.
    fits: Option<Vec<Option<usize>>>,
    /// Keep nothing of this value (an instance beyond a fixed batch size).
    pub(super) skip: bool,
}

impl Walk {
    /// A walk whose values must have shape `fits` (`None`: any).
    pub(super) fn new(elements: Box<dyn Elements>, fits: Option<Vec<Option<usize>>>) -> Walk {
        Walk { elements, dims: Vec::new(), rank: None, path: Vec::new(), bad: None, broken: None, fits, skip: false }
    }

    /// Whether the leaf at `path` lies inside the shape values must have.
    fn keeps(&self) -> bool {
        !self.skip
            && self.fits.as_ref().is_none_or(|fits| {
                fits.len() == self.path.len() && fits.iter().zip(&self.path).all(|(d, i)| d.is_none_or(|d| *i < d))
            })
    }

    /// Starts a value: its shape is found anew.
    pub(super) fn begin(&mut self) {
        self.dims.clear();
        self.rank = None;
        self.path.clear();
    }

    /// The shape of the value just read.
    pub(super) fn shape(&self) -> Vec<usize> {
        self.dims.iter().take(self.rank.unwrap_or(0)).map(|d| d.unwrap_or(0)).collect()
    }

    /// A seed that reads one whole value (after [`Walk::begin`]).
    pub(super) fn seed(&mut self) -> Node<'_> {
        Node(self)
    }

    /// Stops the parser: the value is not rectangular.
    fn broken<E: de::Error>(&mut self, why: String) -> E {
        self.broken = Some(format!("the nested arrays are not rectangular: {why}"));
        E::custom("not rectangular")
    }

    fn leaf<E: de::Error>(&mut self, leaf: Leaf) -> Result<(), E> {
        let depth = self.path.len();
        match self.rank {
            None => self.rank = Some(depth),
            Some(r) if depth < r => {
                let why = format!(
                    "{} is {}, but {} is an array",
                    fmt_path(&self.path),
                    leaf.describe(),
                    fmt_path(&vec![0; depth])
                );
                return Err(self.broken(why));
            }
            Some(_) => {}
        }
        if !self.keeps() {
            return Ok(());
        }
        if let Err(problem) = self.elements.push(&leaf) {
            if self.bad.is_none() {
                self.bad = Some((self.path.clone(), problem));
            }
        }
        Ok(())
    }

    fn array<'de, A: SeqAccess<'de>>(&mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.path.len();
        if self.rank == Some(depth) {
            let why = format!("{} is an array, but {} is not", fmt_path(&self.path), fmt_path(&vec![0; depth]));
            return Err(self.broken(why));
        }
        let expect = self.dims.get(depth).copied().flatten();
        self.path.push(0);
        let mut n = 0usize;
        loop {
            if expect == Some(n) {
                let mut extra = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    extra += 1;
                }
                if extra == 0 {
                    break;
                }
                n += extra;
                self.path.pop();
                return Err(self.wrong_length(depth, n, expect.unwrap_or(0)));
            }
            *self.path.last_mut().expect("pushed above") = n;
            if seq.next_element_seed(Node(&mut *self))?.is_none() {
                break;
            }
            n += 1;
        }
        self.path.pop();
        match expect {
            Some(e) if e != n => Err(self.wrong_length(depth, n, e)),
            Some(_) => Ok(()),
            // The first array at this depth to end: on the first element's chain.
            None => {
                if self.dims.len() <= depth {
                    self.dims.resize(depth + 1, None);
                }
                self.dims[depth] = Some(n);
                if self.rank.is_none() {
                    // An empty array before any leaf: the leaves would be one level down.
                    self.rank = Some(depth + 1);
                }
                Ok(())
            }
        }
    }

    fn wrong_length<E: de::Error>(&mut self, depth: usize, n: usize, want: usize) -> E {
        let why = format!(
            "{} has {n} element{}, but {} has {want}",
            fmt_path(&self.path),
            if n == 1 { "" } else { "s" },
            fmt_path(&vec![0; depth])
        );
        self.broken(why)
    }
}

/// Reads one node (array or leaf) of a value into a [`Walk`].
pub(super) struct Node<'w>(pub(super) &'w mut Walk);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tensor value")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.leaf(Leaf::U64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.leaf(Leaf::I64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.leaf(Leaf::F64(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.leaf(Leaf::Bool(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.leaf(Leaf::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.leaf(Leaf::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.leaf(Leaf::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.leaf(Leaf::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.array(seq)
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

fn float_leaf<T: Copy>(value: &Leaf, dtype: &str, cast: fn(f64) -> T, is_inf: fn(T) -> bool) -> Result<T, String> {
    let x = match value {
        Leaf::U64(n) => *n as f64,
        Leaf::I64(n) => *n as f64,
        Leaf::F64(x) => *x,
        Leaf::Str("NaN") => return Ok(cast(f64::NAN)),
        Leaf::Str("Infinity") => return Ok(cast(f64::INFINITY)),
        Leaf::Str("-Infinity") => return Ok(cast(f64::NEG_INFINITY)),
        other => {
            return Err(format!("{}, expected a number (or \"NaN\", \"Infinity\", \"-Infinity\")", other.describe()))
        }
    };
    let y = cast(x);
    if x.is_finite() && is_inf(y) {
        return Err(format!("{}, which is out of range for {dtype}", value.describe()));
    }
    Ok(y)
}

fn int_leaf<T>(value: &Leaf) -> Result<T, String>
where
    T: TryFrom<i64> + TryFrom<u64> + IntRange,
{
    let out_of_range =
        || format!("{}, which is out of range for {} ({}..={})", value.describe(), T::NAME, T::MIN_TEXT, T::MAX_TEXT);
    match value {
        Leaf::U64(u) => T::try_from(*u).map_err(|_| out_of_range()),
        Leaf::I64(i) => T::try_from(*i).map_err(|_| out_of_range()),
        // An integer too large for i64/u64, which serde_json reads as a float.
        Leaf::F64(x) if x.fract() == 0.0 && x.abs() >= 9.2e18 => Err(out_of_range()),
        Leaf::F64(_) => Err(format!("{}, but {} takes integers only", value.describe(), T::NAME)),
        other => Err(format!("{}, expected an integer", other.describe())),
    }
}

fn bool_leaf(value: &Leaf) -> Result<bool, String> {
    match value {
        Leaf::Bool(b) => Ok(*b),
        other => Err(format!("{}, expected true or false", other.describe())),
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
    fn elements_beyond_the_models_shape_are_walked_but_not_kept() {
        // A body with far more elements than a fixed-shape input takes is refused for its
        // shape; the elements past the shape are never stored (the walk's buffer stays at
        // the model's size, whatever the body holds).
        let mut body = String::from("[");
        for i in 0..100_000 {
            body.push_str(if i == 0 { "0" } else { ",0" });
        }
        body.push(']');
        let shape = [Some(1), Some(4)];
        let specs = [spec("x", DatumType::F32, &shape)];
        let msg = err(&format!(r#"{{"inputs": [{body}]}}"#), &specs);
        assert_contains(&msg, &["found shape [1, 100000]: dimension 1 is 100000, expected 4"]);
        let mut walk = super::Walk::new(super::elements_for(DatumType::F32).unwrap(), Some(vec![Some(4)]));
        walk.begin();
        let mut de = serde_json::Deserializer::from_str(&body);
        serde::de::DeserializeSeed::deserialize(walk.seed(), &mut de).unwrap();
        assert_eq!(walk.shape(), vec![100_000]);
        let kept = walk.elements.into_tensor(&[4]).unwrap();
        assert_eq!(kept.len(), 4);
        // Instances beyond a fixed batch are not kept either.
        let specs = [spec("x", DatumType::F32, &[Some(1), Some(2)])];
        let msg = err(r#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#, &specs);
        assert_contains(&msg, &["exactly 1 instance", "found 3"]);
    }

    #[test]
    fn structural_errors_win_over_value_errors() {
        let specs = [spec("x", DatumType::I8, &[Some(3)])];
        let msg = err(r#"{"inputs": [1000, 2]}"#, &specs);
        assert_contains(&msg, &["found shape [2]"]);
    }
}
