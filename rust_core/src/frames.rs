//! Spike tables as Arrow IPC streams: the body frames of the hardware protocol (DESIGN.md,
//! "The hardware loop"), one stream per frame.
//!
//! Frames arrive from other processes, so reading is defensive: the stream is decoded
//! incrementally with arrow-rs' buffer validation, the columns must be exactly `sample` u32,
//! `neuron` u32 and `time` f64 (any order, nothing else), nulls are refused, and an optional row
//! limit is enforced batch by batch, before the next batch is read. Range checks (ids, finite
//! times) are [`SpikeTable::validate`]'s, so every path into the core words them alike.

use std::panic::AssertUnwindSafe;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Schema};

use crate::error::{frame_err, FrameCode, Result};
use crate::spikes::SpikeTable;

const COLUMNS: [(&str, DataType); 3] =
    [("sample", DataType::UInt32), ("neuron", DataType::UInt32), ("time", DataType::Float64)];

/// Reads one IPC stream holding a spike table. `what` names the frame in error messages;
/// `max_rows` bounds the rows accepted (exceeding it is [`FrameCode::TooLarge`]).
///
/// Copies `bytes` once; [`read_spike_buffer`] reads an Arrow buffer in place.
pub fn read_spike_stream(bytes: &[u8], what: &str, max_rows: Option<usize>) -> Result<SpikeTable> {
    read_spike_buffer(Buffer::from(bytes), what, max_rows)
}

/// [`read_spike_stream`] on an Arrow buffer: the columns of an 8-byte aligned stream are slices
/// of it, no copy (misaligned ones are copied into alignment). A stream of one record batch is
/// used as decoded; several are concatenated.
pub fn read_spike_buffer(buffer: Buffer, what: &str, max_rows: Option<usize>) -> Result<SpikeTable> {
    // arrow-ipc 59 slices a batch's buffers with `Buffer::slice_with_length`, which panics on
    // offsets beyond the message body instead of returning an error; a frame from another
    // process must not be able to take the process down, so a panic is a corrupt frame here.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| decode_batches(buffer, what, max_rows)));
    let batches = decoded.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a buffer lies outside the message");
        Err(frame_err(FrameCode::BadFrame, format!("{what}: corrupt Arrow IPC stream ({why})")))
    })?;
    SpikeTable::from_batches(&batches, what, false)
}

/// Walks the messages of an IPC stream without decoding them and refuses, before any buffer is
/// allocated, what would let a small frame claim a lot of memory: compressed record batches
/// (a ZSTD body can decompress thousands of times larger), dictionary batches (no protocol
/// column is dictionary-encoded) and batches declaring more than `max_rows` rows.
pub fn check_plain_stream(bytes: &[u8], what: &str, max_rows: Option<usize>) -> Result<()> {
    let bad = |why: String| frame_err(FrameCode::BadFrame, format!("{what}: {why}"));
    let corrupt = |why: &str| bad(format!("truncated or corrupt Arrow IPC stream ({why})"));
    let mut pos = 0usize;
    let mut rows = 0usize;
    let word = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    while pos < bytes.len() {
        let Some(mut len) = word(pos) else { return Err(corrupt("a message header is cut off")) };
        pos += 4;
        if len == u32::MAX {
            // the continuation marker; the metadata length follows
            let Some(l) = word(pos) else { return Err(corrupt("a message header is cut off")) };
            len = l;
            pos += 4;
        }
        if len == 0 {
            return Ok(()); // end of stream
        }
        let end = pos.checked_add(len as usize).filter(|&e| e <= bytes.len());
        let Some(end) = end else { return Err(corrupt("a message runs past the end of the frame")) };
        let message = arrow_ipc::root_as_message(&bytes[pos..end])
            .map_err(|e| bad(format!("not an Arrow IPC stream (message header: {e})")))?;
        match message.header_type() {
            arrow_ipc::MessageHeader::DictionaryBatch => {
                return Err(bad("dictionary-encoded Arrow IPC is refused".into()));
            }
            arrow_ipc::MessageHeader::RecordBatch => {
                let batch = message.header_as_record_batch().ok_or_else(|| corrupt("a record batch without header"))?;
                if batch.compression().is_some() {
                    return Err(bad("compressed Arrow IPC is refused (send uncompressed record batches)".into()));
                }
                rows = rows.saturating_add(usize::try_from(batch.length()).unwrap_or(usize::MAX));
                if let Some(limit) = max_rows.filter(|&m| rows > m) {
                    return Err(frame_err(FrameCode::TooLarge, format!("{what}: more than {limit} rows")));
                }
            }
            _ => {}
        }
        let body = usize::try_from(message.bodyLength()).map_err(|_| corrupt("a negative body length"))?;
        pos = end.checked_add(body).ok_or_else(|| corrupt("a body runs past the end of the frame"))?;
    }
    Ok(())
}

fn decode_batches(mut buffer: Buffer, what: &str, max_rows: Option<usize>) -> Result<Vec<RecordBatch>> {
    check_plain_stream(buffer.as_slice(), what, max_rows)?;
    let corrupt =
        |e: ArrowError| frame_err(FrameCode::BadFrame, format!("{what}: truncated or corrupt Arrow IPC stream ({e})"));
    // The incremental decoder never allocates more than the frame holds, whatever lengths a
    // malformed message claims.
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::with_capacity(1);
    let mut rows = 0usize;
    let mut checked = false;
    while !buffer.is_empty() {
        let batch = decoder.decode(&mut buffer);
        if !checked {
            if let Some(schema) = decoder.schema() {
                check_schema(&schema, what)?;
                checked = true;
            }
        }
        let Some(batch) = batch.map_err(|e| if checked { corrupt(e) } else { not_a_stream(what, e) })? else {
            continue;
        };
        rows += batch.num_rows();
        if let Some(limit) = max_rows.filter(|&m| rows > m) {
            return Err(frame_err(FrameCode::TooLarge, format!("{what}: more than {limit} rows")));
        }
        batches.push(batch);
    }
    if !checked {
        return Err(not_a_stream(what, ArrowError::IpcError("no schema message".into())));
    }
    decoder.finish().map_err(corrupt)?;
    Ok(batches)
}

fn not_a_stream(what: &str, e: ArrowError) -> crate::Error {
    frame_err(FrameCode::BadFrame, format!("{what}: not an Arrow IPC stream ({e})"))
}

fn check_schema(schema: &Schema, what: &str) -> Result<()> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let mut want: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    want.sort_unstable();
    if sorted != want || names.len() != want.len() {
        let spec: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        return Err(frame_err(
            FrameCode::BadSchema,
            format!(
                "{what}: columns {names:?} but the protocol needs exactly [\"sample\", \"neuron\", \"time\"] ({})",
                spec.join(", ")
            ),
        ));
    }
    for (name, ty) in &COLUMNS {
        let got = schema.field_with_name(name).expect("checked above").data_type();
        if got != ty {
            return Err(frame_err(
                FrameCode::BadSchema,
                format!("{what}: column '{name}' is {got}, the protocol needs {ty}"),
            ));
        }
    }
    Ok(())
}

/// One IPC stream (schema, the batch, end-of-stream marker) holding `batch`.
pub fn write_stream(batch: &RecordBatch) -> Result<Vec<u8>> {
    let io = |e: ArrowError| frame_err(FrameCode::BadFrame, format!("writing an Arrow IPC stream: {e}"));
    // Schema and framing take a few hundred bytes; the columns take what they take.
    let size = 512 + batch.get_array_memory_size();
    let mut w = StreamWriter::try_new(Vec::with_capacity(size), &batch.schema()).map_err(io)?;
    w.write(batch).map_err(io)?;
    w.finish().map_err(io)?;
    w.into_inner().map_err(io)
}

/// [`write_stream`] of a spike table, with the schema's own non-nullable fields.
pub fn write_spike_stream(table: &SpikeTable) -> Result<Vec<u8>> {
    write_stream(&table.to_record_batch())
}
