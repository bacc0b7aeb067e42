//! Arrow builders, one per column.

use super::*;

/// One column's builder.
#[derive(Debug)]
pub(crate) enum Builder {
    Utf8(StringBuilder),
    F64(Float64Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    pub(crate) fn new(kind: Kind) -> Self {
        match kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::new()),
            Kind::Float64 => Builder::F64(Float64Builder::new()),
            Kind::Int32 => Builder::I32(Int32Builder::new()),
            Kind::Int64 => Builder::I64(Int64Builder::new()),
            Kind::Timestamp | Kind::EpochMillis => Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Kind::Date => Builder::Date(Date32Builder::new()),
            Kind::Boolean => Builder::Bool(BooleanBuilder::new()),
        }
    }

    pub(crate) fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Builder::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::F64(b), Cell::I64(v)) => b.append_value(*v as f64),
            // Int32 cells were range-checked when read.
            (Builder::I32(b), Cell::I64(v)) => b.append_option(i32::try_from(*v).ok()),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::Ts(b), Cell::Micros(v)) => b.append_value(*v),
            (Builder::Date(b), Cell::Days(v)) => b.append_value(*v),
            (b, _) => b.append_null(),
        }
    }

    pub(crate) fn append_null(&mut self) {
        match self {
            Builder::Utf8(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::Ts(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }

    /// The column so far; the builder starts over with room for as many rows (and bytes) again, so the next
    /// chunk of a stream does not regrow every buffer from nothing.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Utf8(b) => {
                let (rows, bytes) = (b.len(), b.values_slice().len());
                let array = Arc::new(b.finish());
                *b = StringBuilder::with_capacity(rows, bytes);
                array
            }
            Builder::F64(b) => {
                let array = Arc::new(b.finish());
                *b = Float64Builder::with_capacity(array.len());
                array
            }
            Builder::I32(b) => {
                let array = Arc::new(b.finish());
                *b = Int32Builder::with_capacity(array.len());
                array
            }
            Builder::I64(b) => {
                let array = Arc::new(b.finish());
                *b = Int64Builder::with_capacity(array.len());
                array
            }
            Builder::Ts(b) => {
                let array = Arc::new(b.finish());
                *b = TimestampMicrosecondBuilder::with_capacity(array.len()).with_timezone("UTC");
                array
            }
            Builder::Date(b) => {
                let array = Arc::new(b.finish());
                *b = Date32Builder::with_capacity(array.len());
                array
            }
            Builder::Bool(b) => {
                let array = Arc::new(b.finish());
                *b = BooleanBuilder::with_capacity(array.len());
                array
            }
        }
    }
}
