//! What a neuromorphic chip does to spikes on their way in and out, for the BrainScaleS-2
//! emulator of `hw_daemon` (DESIGN.md, "The hardware loop").
//!
//! In: inputs outside the recording window `[0, duration]` are dropped, the rest are played on
//! the chip's event clock (times rounded to a multiple of `time_quantum`, ties to even), and
//! channel `c` drives input rows `c + k n_channels` for `k < replication`. Out: every recorded
//! spike is time-stamped on the same clock, and spikes after the window are lost.
//!
//! The parameter-side non-idealities (6-bit weights, threshold mismatch and noise, delay
//! jitter) are the emulator's own: they change the network the run uses, not the spikes, and
//! are drawn there. Between the two ends the forward pass is the exact one of [`Network`].

use arrow_buffer::Buffer;

use crate::error::{frame_err, param_err, shape_err, FrameCode, Result};
use crate::frames;
use crate::network::{Network, SpikeSet};
use crate::spikes::{SpikeTable, Spikes};

/// The chip's input/output stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipIo {
    /// The event clock's period in units of tau_s; 0 means continuous time.
    pub time_quantum: f64,
    /// The recording window is `[0, duration]`.
    pub duration: f64,
    /// Rows of the first layer driven by each input channel.
    pub replication: usize,
    /// Input channels a run addresses (before replication).
    pub n_channels: usize,
}

/// The result of one run: the recorded spikes of every layer and what was lost on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct ChipRun {
    pub layers: Vec<Spikes>,
    /// Input spikes received, played (after the window and replication) and dropped.
    pub input_events: usize,
    pub played_events: usize,
    pub dropped_inputs: usize,
    /// Spikes of each layer that fell after the recording window.
    pub lost_per_layer: Vec<usize>,
}

impl ChipIo {
    pub fn new(time_quantum: f64, duration: f64, replication: usize, n_channels: usize) -> Result<Self> {
        if !(time_quantum.is_finite() && time_quantum >= 0.0) {
            return Err(param_err(format!("chip: time_quantum must be finite and >= 0, got {time_quantum}")));
        }
        if !(duration.is_finite() && duration > 0.0) {
            return Err(param_err(format!("chip: duration must be finite and > 0, got {duration}")));
        }
        if replication == 0 {
            return Err(param_err("chip: replication must be >= 1"));
        }
        Ok(Self { time_quantum, duration, replication, n_channels })
    }

    /// A time on the event clock (`round(t / q) q`, as `numpy.rint` rounds).
    #[inline]
    pub fn quantise(&self, t: f64) -> f64 {
        if self.time_quantum > 0.0 {
            (t / self.time_quantum).round_ties_even() * self.time_quantum
        } else {
            t
        }
    }

    /// The input rows the chip plays, and how many input spikes it dropped. Replicas follow
    /// each other as whole blocks (every played spike for `k = 0`, then `k = 1`, ...), so that
    /// within a sample the rows keep the order of the request.
    pub fn play(&self, input: &SpikeTable) -> Result<(SpikeTable, usize)> {
        let (s, n, t) = (input.sample(), input.neuron(), input.time());
        let kept: Vec<usize> = (0..t.len()).filter(|&r| t[r] >= 0.0 && t[r] <= self.duration).collect();
        let played = kept.len() * self.replication;
        let (mut ps, mut pn, mut pt) =
            (Vec::with_capacity(played), Vec::with_capacity(played), Vec::with_capacity(played));
        for k in 0..self.replication {
            let offset = (k * self.n_channels) as u32;
            for &r in &kept {
                ps.push(s[r]);
                pn.push(n[r] + offset);
                pt.push(self.quantise(t[r]));
            }
        }
        Ok((SpikeTable::from_vecs(ps, pn, pt)?, t.len() - kept.len()))
    }

    /// A layer's spikes as recorded: on the event clock, within the window. Returns the
    /// recorded spikes and how many were lost after the window.
    pub fn record(&self, spikes: &Spikes) -> (Spikes, usize) {
        let mut out = Spikes { offsets: Vec::with_capacity(spikes.offsets.len()), ..Default::default() };
        out.offsets.push(0);
        out.neuron.reserve(spikes.len());
        out.time.reserve(spikes.len());
        for s in 0..spikes.n_samples() {
            for k in spikes.range(s) {
                let t = self.quantise(spikes.time[k]);
                if t <= self.duration {
                    out.neuron.push(spikes.neuron[k]);
                    out.time.push(t);
                }
            }
            out.offsets.push(out.len());
        }
        let lost = spikes.len() - out.len();
        (out, lost)
    }
}

/// One run of `input` (rows addressing input channels) through `net` on the chip.
pub fn run(net: &Network, io: &ChipIo, input: &SpikeTable, n_samples: usize) -> Result<ChipRun> {
    if net.n_in() != io.n_channels * io.replication {
        return Err(shape_err(format!(
            "chip: the network has {} inputs but {} channels x replication {} drive {}",
            net.n_in(),
            io.n_channels,
            io.replication,
            io.n_channels * io.replication
        )));
    }
    input.validate("input spikes", n_samples, io.n_channels)?;
    let (played, dropped_inputs) = io.play(input)?;
    let played_events = played.len();
    let set = SpikeSet::new(played, n_samples)?;
    let spikes = net.forward(&set.input(None)?)?;
    let (layers, lost_per_layer) = spikes.iter().map(|sp| io.record(sp)).unzip();
    Ok(ChipRun { layers, input_events: input.len(), played_events, dropped_inputs, lost_per_layer })
}

/// [`run`] from and to the hardware protocol's frames: the input spikes arrive as one Arrow
/// IPC stream (channels `< n_channels`, at most `max_events` events once replicated), and every
/// layer's recorded spikes leave as one stream each. The daemon's path: no table is converted
/// in between.
pub fn run_frames(
    net: &Network,
    io: &ChipIo,
    frame: Buffer,
    n_samples: usize,
    max_events: usize,
) -> Result<(ChipRun, Vec<Vec<u8>>)> {
    let input = frames::read_spike_buffer(frame, "input spikes", Some(max_events))?;
    let events = input.len().saturating_mul(io.replication);
    if events > max_events {
        return Err(frame_err(
            FrameCode::TooLarge,
            format!("input spikes: {} x replication {} exceeds {max_events} events", input.len(), io.replication),
        ));
    }
    let out = run(net, io, &input, n_samples)?;
    let encoded = out.layers.iter().map(|sp| frames::write_stream(&sp.to_record_batch(None))).collect::<Result<_>>()?;
    Ok((out, encoded))
}
