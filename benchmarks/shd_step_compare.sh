#!/bin/sh
# Side-by-side timing of the SHD-sized EventProp step (rust_core/examples/shd_step.rs) for two
# builds, alternating runs so that both see the same machine load (issue 14).
#
#   git worktree add /tmp/speed-base <base commit>
#   cp rust_core/examples/shd_step.rs /tmp/speed-base/rust_core/examples/
#   (cd /tmp/speed-base && CARGO_TARGET_DIR=/tmp/speed-base/target cargo build --release -p delgrad-core --example shd_step)
#   cargo build --release -p delgrad-core --example shd_step
#   sh benchmarks/shd_step_compare.sh /tmp/speed-base/target/release/examples/shd_step target/release/examples/shd_step
#
# Prints one `median` line per build and configuration (wall and CPU ms per sample).
set -eu
BASE=$1
NEW=$2
run() {
    label=$1
    shift
    for build in base new; do
        bin=$BASE
        [ "$build" = new ] && bin=$NEW
        printf '%s %s: ' "$build" "$label"
        "$bin" "$@" | tail -1
    done
}
echo "machine: $(uname -srm), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
# Feed-forward, batch 32: cost against input spikes per sample.
for spikes in 1000 4000 8000 16000; do
    run "feed-forward batch 32, $spikes input spikes" 32 "$spikes" 3 0
done
# Feed-forward at 8000 input spikes: cost against the hidden rate (input weight mean).
for mean in 0.0 0.003; do
    run "feed-forward batch 32, 8000 input spikes, weight mean $mean" 32 8000 3 0 "$mean"
done
# Recurrent (recurrent std 0.01, as pipelines/events.toml), batch 2.
for spikes in 1000 4000 8000; do
    run "recurrent batch 2, $spikes input spikes" 2 "$spikes" 1 0.01
done
printf 'new recurrent batch 2, 16000 input spikes: '
"$NEW" 2 16000 2 0.01 | tail -1
echo "done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
