//! Spike tables as Arrow IPC frames (`frames`) and the chip's input/output stage (`chip`).

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, UInt32Array};
use arrow_buffer::Buffer;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{Field, Schema};
use delgrad_core::chip::{self, ChipIo};
use delgrad_core::frames::{read_spike_stream, write_spike_stream, write_stream};
use delgrad_core::{DelayKind, Error, FrameCode, LayerRef, Network, Neuron, SpikeSet, SpikeTable};

mod common;
use common::Rng;

fn table(sample: &[u32], neuron: &[u32], time: &[f64]) -> SpikeTable {
    SpikeTable::from_vecs(sample.to_vec(), neuron.to_vec(), time.to_vec()).unwrap()
}

fn code(e: Error) -> FrameCode {
    match e {
        Error::Frame { code, .. } => code,
        other => panic!("expected a frame error, got {other:?}"),
    }
}

fn stream(cols: Vec<(&str, ArrayRef)>) -> Vec<u8> {
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|c| c.1).collect()).unwrap();
    write_stream(&batch).unwrap()
}

#[test]
fn round_trip_keeps_every_value() {
    let t = table(&[0, 0, 2], &[1, 4, 0], &[0.25, -1.5, 1e300]);
    let back = read_spike_stream(&write_spike_stream(&t).unwrap(), "x", None).unwrap();
    assert_eq!((back.sample(), back.neuron(), back.time()), (t.sample(), t.neuron(), t.time()));
    let empty = read_spike_stream(&write_spike_stream(&table(&[], &[], &[])).unwrap(), "x", None).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn columns_in_any_order_and_several_batches_are_read() {
    let time: ArrayRef = Arc::new(Float64Array::from(vec![0.5, 0.7]));
    let neuron: ArrayRef = Arc::new(UInt32Array::from(vec![3, 1]));
    let sample: ArrayRef = Arc::new(UInt32Array::from(vec![1, 0]));
    let batch = RecordBatch::try_from_iter(vec![("time", time), ("neuron", neuron), ("sample", sample)]).unwrap();
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.write(&batch.slice(0, 1)).unwrap();
    w.finish().unwrap();
    let t = read_spike_stream(&w.into_inner().unwrap(), "x", None).unwrap();
    assert_eq!(t.sample(), &[1, 0, 1]);
    assert_eq!(t.neuron(), &[3, 1, 3]);
    assert_eq!(t.time(), &[0.5, 0.7, 0.5]);
}

#[test]
fn bad_frames_are_refused_with_their_code_and_name() {
    let good = write_spike_stream(&table(&[0; 50], &[1; 50], &[0.5; 50])).unwrap();
    let cases: Vec<(&str, Vec<u8>, FrameCode)> = vec![
        ("empty", Vec::new(), FrameCode::BadFrame),
        ("garbage", b"garbage that is no arrow stream".to_vec(), FrameCode::BadFrame),
        ("truncated", good[..good.len() - 300].to_vec(), FrameCode::BadFrame),
        (
            "float32 time",
            stream(vec![
                ("sample", Arc::new(UInt32Array::from(vec![0]))),
                ("neuron", Arc::new(UInt32Array::from(vec![0]))),
                ("time", Arc::new(Float32Array::from(vec![0.5]))),
            ]),
            FrameCode::BadSchema,
        ),
        (
            "extra column",
            stream(vec![
                ("sample", Arc::new(UInt32Array::from(vec![0]))),
                ("neuron", Arc::new(UInt32Array::from(vec![0]))),
                ("time", Arc::new(Float64Array::from(vec![0.5]))),
                ("x", Arc::new(Float64Array::from(vec![0.0]))),
            ]),
            FrameCode::BadSchema,
        ),
        (
            "missing column",
            stream(vec![
                ("sample", Arc::new(UInt32Array::from(vec![0]))),
                ("neuron", Arc::new(UInt32Array::from(vec![0]))),
            ]),
            FrameCode::BadSchema,
        ),
        (
            "duplicated column",
            stream(vec![
                ("sample", Arc::new(UInt32Array::from(vec![0]))),
                ("sample", Arc::new(UInt32Array::from(vec![0]))),
                ("time", Arc::new(Float64Array::from(vec![0.5]))),
            ]),
            FrameCode::BadSchema,
        ),
    ];
    for (name, bytes, want) in cases {
        let e = read_spike_stream(&bytes, "input spikes", None).expect_err(name);
        assert!(e.to_string().starts_with("input spikes: "), "{name}: {e}");
        assert_eq!(code(e), want, "{name}");
    }
    let e = read_spike_stream(&good, "input spikes", Some(49)).unwrap_err();
    assert!(e.to_string().contains("more than 49 rows"), "{e}");
    assert_eq!(code(e), FrameCode::TooLarge);
    assert!(read_spike_stream(&good, "input spikes", Some(50)).is_ok());
}

#[test]
fn nulls_are_spike_errors_naming_the_row() {
    let bytes = stream(vec![
        ("sample", Arc::new(UInt32Array::from(vec![0, 0]))),
        ("neuron", Arc::new(UInt32Array::from(vec![0, 1]))),
        ("time", Arc::new(Float64Array::from(vec![Some(0.5), None]))),
    ]);
    match read_spike_stream(&bytes, "layer 1 spikes", None) {
        Err(Error::Spikes(m)) => assert_eq!(m, "layer 1 spikes: column 'time' has a null at row 1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn play_drops_outside_the_window_quantises_and_replicates_in_blocks() {
    let io = ChipIo::new(0.25, 2.0, 3, 2).unwrap();
    let t = table(&[0, 0, 1, 1], &[1, 0, 0, 1], &[0.3, -0.1, 2.0, 2.01]);
    let (played, dropped) = io.play(&t).unwrap();
    assert_eq!(dropped, 2); // -0.1 and 2.01
                            // Rows kept: (0, 1, 0.3 -> 0.25) and (1, 0, 2.0); replica k adds 2k to the channel.
    assert_eq!(played.sample(), &[0, 1, 0, 1, 0, 1]);
    assert_eq!(played.neuron(), &[1, 0, 3, 2, 5, 4]);
    assert_eq!(played.time(), &[0.25, 2.0, 0.25, 2.0, 0.25, 2.0]);
    // Ties round to even, as numpy.rint does: 0.375 / 0.25 = 1.5 -> 2, 0.625 / 0.25 = 2.5 -> 2.
    assert_eq!((io.quantise(0.375), io.quantise(0.625)), (0.5, 0.5));
    assert_eq!(ChipIo::new(0.0, 2.0, 1, 2).unwrap().quantise(0.3), 0.3);
}

#[test]
fn bad_chip_settings_are_parameter_errors() {
    for (q, d, r) in [(-1.0, 1.0, 1), (f64::NAN, 1.0, 1), (0.1, 0.0, 1), (0.1, f64::INFINITY, 1), (0.1, 1.0, 0)] {
        assert!(matches!(ChipIo::new(q, d, r, 2), Err(Error::Parameter(_))), "{q} {d} {r}");
    }
}

/// A 4-channel x 5 replica, 20-30-3 network with axonal delays, tau_m = tau_s (DelGrad's
/// BrainScaleS-2 setup), and a batch of Yin-Yang-like inputs.
struct Setup {
    w1: Vec<f64>,
    d1: Vec<f64>,
    w2: Vec<f64>,
    d2: Vec<f64>,
    input: SpikeTable,
}

impl Setup {
    fn new(n_samples: usize) -> Self {
        let mut rng = Rng(11);
        let (mut s, mut n, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..n_samples {
            for c in 0..4u32 {
                s.push(k as u32);
                n.push(c);
                t.push(rng.uniform(-0.2, 2.2)); // some fall outside the window [0, 2]
            }
        }
        Self {
            w1: (0..600).map(|_| rng.normal(0.6, 0.4)).collect(),
            d1: rng.vec(20, 0.0, 0.3),
            w2: (0..90).map(|_| rng.normal(0.6, 0.4)).collect(),
            d2: rng.vec(30, 0.0, 0.3),
            input: SpikeTable::from_vecs(s, n, t).unwrap(),
        }
    }
    fn net(&self) -> Network<'_> {
        Network::new(
            Neuron::new(1.0, 1.0, 2.6).unwrap(),
            vec![
                LayerRef::new(30, 20, &self.w1, DelayKind::Axonal, &self.d1, "hidden").unwrap(),
                LayerRef::new(3, 30, &self.w2, DelayKind::Axonal, &self.d2, "output").unwrap(),
            ],
        )
        .unwrap()
    }
}

#[test]
fn run_is_the_forward_pass_between_play_and_record() {
    let setup = Setup::new(64);
    let (net, io) = (setup.net(), ChipIo::new(8e-9 / 6e-6, 2.0, 5, 4).unwrap());
    let run = chip::run(&net, &io, &setup.input, 64).unwrap();
    let (played, dropped) = io.play(&setup.input).unwrap();
    let set = SpikeSet::new(played, 64).unwrap();
    let exact = net.forward(&set.input(None).unwrap()).unwrap();
    assert_eq!((run.dropped_inputs, run.played_events), (dropped, set.table.len()));
    assert!(dropped > 0 && dropped < setup.input.len());
    for (l, (got, want)) in run.layers.iter().zip(&exact).enumerate() {
        let kept: Vec<(u32, f64)> =
            want.neuron.iter().zip(&want.time).map(|(&j, &t)| (j, io.quantise(t))).filter(|&(_, t)| t <= 2.0).collect();
        let got_rows: Vec<(u32, f64)> = got.neuron.iter().copied().zip(got.time.iter().copied()).collect();
        assert_eq!(got_rows, kept, "layer {l}");
        assert_eq!(run.lost_per_layer[l], want.len() - kept.len());
        assert!(got.time.iter().all(|t| (t / io.time_quantum - (t / io.time_quantum).round()).abs() < 1e-6));
    }
    assert!(run.lost_per_layer[0] > 0, "the window should cut some late hidden spikes");
}

#[test]
fn run_frames_is_run_on_frames() {
    let setup = Setup::new(40);
    let (net, io) = (setup.net(), ChipIo::new(8e-9 / 6e-6, 2.0, 5, 4).unwrap());
    let frame = write_spike_stream(&setup.input).unwrap();
    let (run, frames) = chip::run_frames(&net, &io, Buffer::from(&frame[..]), 40, 1 << 20).unwrap();
    assert_eq!(run, chip::run(&net, &io, &setup.input, 40).unwrap());
    for (sp, f) in run.layers.iter().zip(&frames) {
        let back = read_spike_stream(f, "layer", None).unwrap();
        assert_eq!(back.neuron(), &sp.neuron[..]);
        assert_eq!(back.time(), &sp.time[..]);
        assert_eq!(back.sample(), &sp.sample_column()[..]);
    }
    // 160 inputs x 5 replicas = 800 events.
    assert!(chip::run_frames(&net, &io, Buffer::from(&frame[..]), 40, 800).is_ok());
    let e = chip::run_frames(&net, &io, Buffer::from(&frame[..]), 40, 799).unwrap_err();
    assert!(e.to_string().contains("160 x replication 5 exceeds 799 events"), "{e}");
    assert_eq!(code(e), FrameCode::TooLarge);
}

#[test]
fn run_refuses_inputs_that_do_not_fit() {
    let setup = Setup::new(3);
    let net = setup.net();
    let io = ChipIo::new(0.0, 2.0, 5, 4).unwrap();
    let bad_channel = table(&[0], &[4], &[1.0]);
    match chip::run(&net, &io, &bad_channel, 3) {
        Err(Error::Spikes(m)) => assert!(m.contains("neuron id 4 at row 0"), "{m}"),
        other => panic!("{other:?}"),
    }
    match chip::run(&net, &io, &table(&[3], &[0], &[1.0]), 3) {
        Err(Error::Spikes(m)) => assert!(m.contains("sample id 3"), "{m}"),
        other => panic!("{other:?}"),
    }
    match chip::run(&net, &io, &table(&[0], &[0], &[f64::NAN]), 3) {
        Err(Error::Spikes(m)) => assert!(m.contains("time at row 0 is NaN"), "{m}"),
        other => panic!("{other:?}"),
    }
    let wrong_width = ChipIo::new(0.0, 2.0, 4, 4).unwrap();
    assert!(matches!(chip::run(&net, &wrong_width, &setup.input, 3), Err(Error::Shape(_))));
}

#[test]
fn mutated_frames_give_errors_never_panics() {
    // Random corruption of a valid two-batch stream: bytes flipped, the frame cut, or both.
    // Every outcome must be a table or an error; the reader must neither panic nor allocate
    // what a corrupted length claims.
    let t = table(&[0, 0, 1, 2, 2, 2], &[1, 4, 0, 3, 3, 2], &[0.5, 0.25, 1.0, 1.5, 2.0, 0.75]);
    let batch = t.to_record_batch();
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.write(&batch.slice(2, 3)).unwrap();
    w.finish().unwrap();
    let good = w.into_inner().unwrap();
    let mut rng = Rng(5);
    let (mut ok, mut errors) = (0, 0);
    for case in 0..20_000 {
        let mut bytes = good.clone();
        for _ in 0..1 + (rng.next() * 4.0) as usize {
            let at = (rng.next() * bytes.len() as f64) as usize;
            bytes[at] = (rng.next() * 256.0) as u8;
        }
        if case % 3 == 0 {
            bytes.truncate((rng.next() * bytes.len() as f64) as usize);
        }
        match read_spike_stream(&bytes, "fuzz", Some(1000)) {
            Ok(t) => {
                ok += 1;
                assert!(t.len() <= 1000);
            }
            Err(Error::Frame { .. } | Error::Spikes(_)) => errors += 1,
            Err(other) => panic!("case {case}: unexpected error kind {other:?}"),
        }
    }
    assert!(ok > 100 && errors > 100, "{ok} decoded, {errors} refused");
}

#[test]
fn a_buffer_beyond_the_body_is_a_corrupt_frame() {
    // The time column of 6 rows is a buffer descriptor (offset, length = 48) in the batch's
    // metadata, its offset past the two id columns: claim a length far beyond the body.
    let t = table(&[0; 6], &[1; 6], &[0.5; 6]);
    let mut bytes = write_spike_stream(&t).unwrap();
    let le = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap());
    let at = (8..bytes.len() - 8)
        .find(|&p| le(&bytes[p..p + 8]) == 48 && (16..1024).contains(&le(&bytes[p - 8..p])))
        .expect("the time buffer's descriptor");
    bytes[at..at + 8].copy_from_slice(&(1i64 << 20).to_le_bytes());
    let e = read_spike_stream(&bytes, "input spikes", None).unwrap_err();
    assert!(e.to_string().starts_with("input spikes: corrupt Arrow IPC stream"), "{e}");
    assert_eq!(code(e), FrameCode::BadFrame);
}
