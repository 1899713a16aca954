//! Functions whose result size is set by an argument (`repeat('x', 2e9)`, `lpad`, `rpad`,
//! `array_repeat`, `range`, `generate_series`) allocate outside DataFusion's memory pool, so
//! the query memory limit alone does not hold them: one such call took the server to 7.7 GB
//! against a 1 GiB limit. [`install`] replaces each of them in a session by a wrapper that
//! works out, from the arguments, an upper bound of what one call would allocate, and refuses
//! a call over its cap with [`TooLarge`] (a user error: 400 with the reason) before the inner
//! function allocates anything. The cap is a quarter of the query memory limit: the value is
//! copied a few times on its way (result array, constant folding, output) and none of those
//! copies is counted by the pool.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::datatypes::{DataType, FieldRef};
use deltalake::datafusion::common::{Result, ScalarValue};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::execution::FunctionRegistry;
use deltalake::datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use deltalake::datafusion::prelude::SessionContext;

/// A call that would allocate more than the cap.
#[derive(Debug, thiserror::Error)]
#[error(
    "{function}(…) would produce about {bytes} bytes in one call, over the {cap}-byte cap \
     (a quarter of the query memory limit); ask for a smaller result"
)]
pub struct TooLarge {
    /// The function's name.
    pub function: String,
    /// The upper bound worked out from the arguments.
    pub bytes: u64,
    /// The cap in force.
    pub cap: u64,
}

/// How a function's result grows with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: `len(text) × n`.
    Repeat,
    /// `lpad/rpad(text, n [, fill])`: `n` characters.
    Pad,
    /// `array_repeat(element, n)`: `n` elements.
    ArrayRepeat,
    /// `range/generate_series([start,] stop [, step])`: one 8-byte element per step.
    Series,
}

const GROWING: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Replaces the growing functions of `context` by bounded ones; `memory_limit` is the query
/// memory limit (`None`: Arrow's own 2 GiB limit of one string array is the cap).
pub fn install(context: &SessionContext, memory_limit: Option<usize>) -> Result<()> {
    let cap = memory_limit.map_or(i32::MAX as u64, |m| (m as u64 / 4).max(1));
    for (name, growth) in GROWING {
        let inner = context.udf(name)?;
        context.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth: *growth,
            cap,
        }));
    }
    Ok(())
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    cap: u64,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.growth == other.growth && self.cap == other.cap
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
        self.cap.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = bound(self.growth, &args.args, args.number_rows)?;
        if bytes > self.cap {
            return Err(DataFusionError::External(Box::new(TooLarge {
                function: self.inner.name().to_string(),
                bytes,
                cap: self.cap,
            })));
        }
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes one call allocates for its result, over all `rows`.
fn bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        1
    } else {
        rows
    };
    let mut total = 0u64;
    for row in 0..rows {
        let one = match growth {
            Growth::Repeat => text_len(args, 0, row)?.saturating_mul(count(args, 1, row)?),
            Growth::Pad => pad_bytes(args, row)?,
            Growth::ArrayRepeat => element_bytes(args, row)?.saturating_mul(count(args, 1, row)?),
            Growth::Series => series_len(args, row)?.saturating_mul(8),
        };
        total = total.saturating_add(one);
    }
    Ok(total)
}

/// The value of argument `i` at `row`, without copying a whole array.
fn scalar_at(args: &[ColumnarValue], i: usize, row: usize) -> Result<Option<ScalarValue>> {
    Ok(match args.get(i) {
        None => None,
        Some(ColumnarValue::Scalar(s)) => Some(s.clone()),
        Some(ColumnarValue::Array(a)) if is_text(a.data_type()) => None,
        Some(ColumnarValue::Array(a)) => Some(ScalarValue::try_from_array(a, row)?),
    })
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Argument `i` at `row` as a count (a negative or missing one counts as 0).
fn count(args: &[ColumnarValue], i: usize, row: usize) -> Result<u64> {
    Ok(integer(args, i, row)?.map_or(0, |n| n.max(0) as u64))
}

fn integer(args: &[ColumnarValue], i: usize, row: usize) -> Result<Option<i64>> {
    let Some(value) = scalar_at(args, i, row)? else {
        return Ok(None);
    };
    if value.is_null() || !value.data_type().is_integer() {
        return Ok(None);
    }
    match value.cast_to(&DataType::Int64)? {
        ScalarValue::Int64(n) => Ok(n),
        _ => Ok(None),
    }
}

/// The text of argument `i` at `row`, borrowed from its array where it is one.
fn with_text<T>(args: &[ColumnarValue], i: usize, row: usize, f: impl Fn(&str) -> T) -> Option<T> {
    match args.get(i)? {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(t))
            | ScalarValue::LargeUtf8(Some(t))
            | ScalarValue::Utf8View(Some(t)) => Some(f(t)),
            _ => None,
        },
        ColumnarValue::Array(a) => text_in(a, row).map(f),
    }
}

fn text_in(a: &ArrayRef, row: usize) -> Option<&str> {
    if a.is_null(row) {
        return None;
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        Some(s.value(row))
    } else if let Some(s) = a.as_string_opt::<i64>() {
        Some(s.value(row))
    } else {
        a.as_string_view_opt().map(|s| s.value(row))
    }
}

fn text_len(args: &[ColumnarValue], i: usize, row: usize) -> Result<u64> {
    Ok(with_text(args, i, row, |t| t.len() as u64).unwrap_or(0))
}

/// `n` characters of at most 4 bytes each (1 when the text and the fill are ASCII).
fn pad_bytes(args: &[ColumnarValue], row: usize) -> Result<u64> {
    let ascii = with_text(args, 0, row, str::is_ascii).unwrap_or(true)
        && with_text(args, 2, row, str::is_ascii).unwrap_or(true);
    Ok(count(args, 1, row)?.saturating_mul(if ascii { 1 } else { 4 }))
}

fn element_bytes(args: &[ColumnarValue], row: usize) -> Result<u64> {
    if let Some(len) = with_text(args, 0, row, |t| t.len() as u64) {
        return Ok(len.max(8));
    }
    Ok(match args.first() {
        Some(ColumnarValue::Scalar(s)) => s.size() as u64,
        Some(ColumnarValue::Array(a)) => (a.get_array_memory_size() / a.len().max(1)) as u64,
        None => 0,
    }
    .max(8))
}

/// Elements of `range/generate_series([start,] stop [, step])` at `row`: integers exactly,
/// dates and timestamps through their count of microseconds and an interval step's length.
fn series_len(args: &[ColumnarValue], row: usize) -> Result<u64> {
    let (start, stop, step) = match args.len() {
        1 => (Some(0), point(args, 0, row)?, Some(1)),
        2 => (point(args, 0, row)?, point(args, 1, row)?, Some(1)),
        _ => (
            point(args, 0, row)?,
            point(args, 1, row)?,
            step(args, 2, row)?,
        ),
    };
    let (Some(start), Some(stop), Some(step)) = (start, stop, step) else {
        return Ok(0);
    };
    if step == 0 || (stop - start).signum() != step.signum() {
        return Ok(1);
    }
    Ok(((stop - start) / step).unsigned_abs().saturating_add(1) as u64)
}

/// A series bound as an integer: itself, or a date/timestamp in microseconds.
fn point(args: &[ColumnarValue], i: usize, row: usize) -> Result<Option<i128>> {
    let Some(v) = scalar_at(args, i, row)? else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    if v.data_type().is_integer() {
        return Ok(integer(args, i, row)?.map(i128::from));
    }
    let micros = DataType::Timestamp(deltalake::arrow::datatypes::TimeUnit::Microsecond, None);
    Ok(match v.cast_to(&micros) {
        Ok(ScalarValue::TimestampMicrosecond(Some(t), _)) => Some(i128::from(t)),
        _ => None,
    })
}

/// A series step: an integer, or an interval's length in microseconds (a month as 28 days,
/// so the bound stays an upper one).
fn step(args: &[ColumnarValue], i: usize, row: usize) -> Result<Option<i128>> {
    let Some(v) = scalar_at(args, i, row)? else {
        return Ok(None);
    };
    const DAY: i128 = 86_400_000_000;
    Ok(match v {
        ScalarValue::IntervalMonthDayNano(Some(x)) => Some(
            i128::from(x.months) * 28 * DAY
                + i128::from(x.days) * DAY
                + i128::from(x.nanoseconds) / 1000,
        ),
        ScalarValue::IntervalDayTime(Some(x)) => {
            Some(i128::from(x.days) * DAY + i128::from(x.milliseconds) * 1000)
        }
        ScalarValue::IntervalYearMonth(Some(m)) => Some(i128::from(m) * 28 * DAY),
        v if v.data_type().is_integer() => integer(args, i, row)?.map(i128::from),
        _ => None,
    })
}
