//! Times one forward pass per batch shape, to see where the model is slow:
//! `cargo run --release -p crossenc-model --example forward_timing -- models/default`.
use std::time::Instant;

use crossenc_model::{CrossEncoder, ModelFolder, PackedPairs};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: forward_timing MODEL_DIR");
    let folder = ModelFolder::open(dir).unwrap();
    let model = CrossEncoder::load(
        &folder,
        candle_core::Device::Cpu,
        crossenc_model::Dtype::F32,
    )
    .unwrap();
    for (pairs, width) in [(1, 16), (32, 32), (32, 128), (8, 512), (32, 512)] {
        let mut batch = PackedPairs::with_capacity(pairs, pairs * width);
        for _ in 0..pairs {
            let ids: Vec<u32> = (0..width as u32).map(|i| 1000 + i).collect();
            batch.push(ids.into_iter(), &vec![0u8; width]);
        }
        model.score_pairs(&batch).unwrap();
        let start = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            model.score_pairs(&batch).unwrap();
        }
        let seconds = start.elapsed().as_secs_f64() / runs as f64;
        println!(
            "{pairs:>3} x {width:>3}: {:>8.1} ms  {:>7.0} tokens/s",
            seconds * 1e3,
            (pairs * width) as f64 / seconds
        );
    }
}
