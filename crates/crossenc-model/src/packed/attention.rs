//! Attention on packed pairs: each pair attends over its own tokens, one task per
//! (pair, query head), reading Q, K and V from the fused `[tokens, Q|K|V]` product and
//! writing its head's columns of the context: `[tokens, heads x head_dim]`, or
//! `[pairs, heads x head_dim]` where only each pair's first or last token asks
//! ([`Queries`]). Query heads may share key and value heads (grouped-query attention).
//! Between the scores and the softmax an architecture may change them: ModernBERT's
//! sliding window, DeBERTa's relative scores, a decoder's causal mask.

use rayon::prelude::*;

use super::{product, product_into, softmax_rows, View};

/// Which of a pair's tokens attention computes a context for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queries {
    /// Every token: the context is `[tokens, hidden]`.
    All,
    /// Each pair's first token alone, the context `[pairs, hidden]`: in the last layer
    /// of a model whose head reads only that token, no other row of it is ever read.
    First,
    /// Each pair's last token alone, the context `[pairs, hidden]`: a decoder's head
    /// reads the last position.
    Last,
}

impl Queries {
    /// The rows of the context, `tokens` in `pairs` pairs.
    pub(crate) fn rows(self, tokens: usize, pairs: usize) -> usize {
        match self {
            Queries::All => tokens,
            Queries::First | Queries::Last => pairs,
        }
    }
}

/// The heads of an attention layer: `heads` query heads, in groups that share each of
/// `kv_heads` key and value heads, all `head_dim` wide. A row of the fused product
/// holds every query head, then every key head, then every value head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// BERT's: as many key and value heads as query heads, `hidden / heads` wide.
    pub(crate) fn even(hidden: usize, heads: usize) -> Self {
        Self {
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
        }
    }

    /// The width of a row of the fused Q|K|V product.
    pub(crate) fn row_width(self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// The width of the context: every query head's output.
    pub(crate) fn context_width(self) -> usize {
        self.heads * self.head_dim
    }

    /// Where query head `head`'s columns of part `part` (0 Q, 1 K, 2 V) start in a row.
    fn column(self, part: usize, head: usize) -> usize {
        let d = self.head_dim;
        let shared = head / (self.heads / self.kv_heads);
        match part {
            0 => head * d,
            1 => (self.heads + shared) * d,
            _ => (self.heads + self.kv_heads + shared) * d,
        }
    }
}

/// Self-attention of every pair: the context of the `queries` asked, from the fused
/// Q|K|V. With a `window`, a
/// token attends only to tokens at most that far from it (ModernBERT's local layers).
pub(crate) fn attend(
    offsets: &[usize],
    qkv: &[f32],
    (shape, queries): (AttentionShape, Queries),
    window: Option<usize>,
    context: &mut Vec<f32>,
) {
    let mask = |task: &HeadTask<'_>, scores: &mut [f32]| {
        let (len, Some(window)) = (task.len, window) else {
            return;
        };
        if window + 1 >= len {
            return;
        }
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let i = i + task.first_query;
            let (near, far) = (i.saturating_sub(window), (i + window + 1).min(len));
            row[..near].fill(f32::NEG_INFINITY);
            row[far..].fill(f32::NEG_INFINITY);
        }
    };
    attend_each(offsets, qkv, (shape, queries), 1, context, Keys::All(mask));
}

/// The keys and values of a prompt's prefix at one layer, computed before a pair's own
/// tokens: `[prefix tokens, K | V]`, each row every key head, then every value head.
pub(crate) type Past<'a> = Option<&'a [f32]>;

/// Causal self-attention of every pair: a token attends to itself and the tokens
/// before it in its pair (a decoder's), each pair on its own. A pair with a `past`
/// (`past[pair]`, where given) continues a prefix computed before: its tokens attend
/// to every one of the prefix's keys first.
pub(crate) fn attend_causal(
    offsets: &[usize],
    qkv: &[f32],
    (shape, queries): (AttentionShape, Queries),
    past: &[Past<'_>],
    context: &mut Vec<f32>,
) {
    let mask = |task: &HeadTask<'_>, scores: &mut [f32]| {
        // The block's keys end at its last query: only the block's own diagonal is masked.
        for (i, row) in scores.chunks_exact_mut(task.len).enumerate() {
            row[i + task.first_query + 1..].fill(f32::NEG_INFINITY);
        }
    };
    attend_each(
        offsets,
        qkv,
        (shape, queries),
        1,
        context,
        Keys::UpToEachQuery(mask, past),
    );
}

/// Query rows a causal task takes at a time: each block reads the keys up to its last
/// query alone, so that attention does about half the bidirectional square (what the
/// scheduler's cost counts) and a long pair's scores never fill `len x len` floats.
const CAUSAL_BLOCK: usize = 64;

/// Which keys each query reads, and what changes its scores before the softmax.
enum Keys<'p, A> {
    /// Every key of its pair; `adjust` sees the task's whole `[queries, len]` scores.
    All(A),
    /// The keys at or before it (a decoder's), after each pair's past; `adjust` masks
    /// each block's diagonal.
    UpToEachQuery(A, &'p [Past<'p>]),
}

/// [`attend`] with DeBERTa's relative scores added: for query i and key j, the query
/// against the key projection of the relative embedding of i - j, and the key against
/// its query projection, all scaled by 1 / sqrt(3 * head size).
pub(crate) fn attend_relative(
    offsets: &[usize],
    qkv: &[f32],
    (shape, queries): (AttentionShape, Queries),
    (relative, layer): (&RelativeAttention, usize),
    context: &mut Vec<f32>,
) {
    let table = &relative.projected[layer];
    let positions = 2 * relative.span;
    let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    // The embedding each distance reads: entry delta + longest - 1.
    let index: Vec<usize> = (0..2 * longest - 1)
        .map(|i| relative.index(i as i64 - (longest as i64 - 1)))
        .collect();
    let add = |task: &HeadTask<'_>, scores: &mut [f32]| {
        let (len, asking) = (task.len, task.q.rows);
        let (relative_q, relative_k) = (task.of(table, 0, positions), task.of(table, 1, positions));
        let mut to_position = vec![0.0f32; asking * positions];
        let operands = (task.q, relative_k.transposed());
        product(&mut to_position, positions, false, operands, task.scale, 1);
        let mut from_position = vec![0.0f32; len * positions];
        let operands = (task.k, relative_q.transposed());
        product(
            &mut from_position,
            positions,
            false,
            operands,
            task.scale,
            1,
        );
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let c2p = &to_position[i * positions..][..positions];
            for (j, score) in row.iter_mut().enumerate() {
                let r = index[i + longest - 1 - j];
                *score += c2p[r] + from_position[j * positions + r];
            }
        }
    };
    attend_each(offsets, qkv, (shape, queries), 3, context, Keys::All(add));
}

/// DeBERTa's relative attention: content-to-position and position-to-content scores
/// added to the content scores, from relative embeddings projected by each layer's own
/// query and key (`share_att_key`), over log-bucketed distances.
pub(crate) struct RelativeAttention {
    /// Each layer's Q|K|V projection of the normed relative embeddings,
    /// `[2 * span, 3 * hidden]` (the V third unused).
    pub projected: Vec<Vec<f32>>,
    /// Relative embeddings on each side: `position_buckets`, or the largest distance.
    pub span: usize,
    /// `position_buckets` (0: distances are not bucketed).
    pub buckets: usize,
    /// `max_relative_positions`, for the log buckets.
    pub max_position: usize,
}

impl RelativeAttention {
    /// Which relative embedding a query `delta` tokens after its key reads, as
    /// transformers' `make_log_bucket_position` and the clamp into the table make it.
    fn index(&self, delta: i64) -> usize {
        let bucketed = if self.buckets > 0 {
            log_bucket(delta, self.buckets, self.max_position)
        } else {
            delta
        };
        (bucketed + self.span as i64).clamp(0, 2 * self.span as i64 - 1) as usize
    }
}

/// Distances within half the buckets stay as they are; longer ones share buckets that
/// grow logarithmically up to `max_position`. f32 as transformers computes it.
fn log_bucket(delta: i64, buckets: usize, max_position: usize) -> i64 {
    let mid = (buckets / 2) as i64;
    let distance = if delta < mid && delta > -mid {
        mid - 1
    } else {
        delta.abs()
    };
    if distance <= mid {
        return delta;
    }
    let ratio = (((max_position - 1) as f64) / mid as f64) as f32;
    let log = ((distance as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil();
    (log + mid as f32) as i64 * delta.signum()
}

/// One (pair, head) of a batch: its Q (every token's, or the first's or last's) and K as
/// the fused rows hold them, and the scale of its scores.
struct HeadTask<'a> {
    q: View<'a>,
    k: View<'a>,
    /// The keys the queries read: the pair's length, or a causal block's last query + 1.
    len: usize,
    /// The position among the keys of the first query asked (past its pair's past).
    first_query: usize,
    head: usize,
    shape: AttentionShape,
    scale: f32,
}

impl HeadTask<'_> {
    /// This head's columns of part `part` (0 Q, 1 K, 2 V) of a table laid out as the
    /// fused product is.
    fn of<'t>(&self, table: &'t [f32], part: usize, rows: usize) -> View<'t> {
        let (d, from) = (self.shape.head_dim, self.shape.column(part, self.head));
        View::columns(table, rows, (from, d), self.shape.row_width())
    }
}

/// Runs every (pair, head) task: scores q·kᵀ scaled by 1 / sqrt(`scale_terms` * head
/// size), `adjust` on them (a row per query, the first token's first), softmax, then
/// the probabilities times V into the context.
fn attend_each(
    offsets: &[usize],
    qkv: &[f32],
    (shape, queries): (AttentionShape, Queries),
    scale_terms: usize,
    context: &mut Vec<f32>,
    keys: Keys<'_, impl Fn(&HeadTask<'_>, &mut [f32]) + Sync>,
) {
    let (causal, adjust, past) = match &keys {
        Keys::All(adjust) => (false, adjust, &[][..]),
        Keys::UpToEachQuery(adjust, past) => (true, adjust, *past),
    };
    let tokens = offsets.last().copied().unwrap_or(0);
    context.clear();
    if tokens == 0 {
        return;
    }
    let (heads, d, width) = (shape.heads, shape.head_dim, shape.row_width());
    let h = shape.context_width();
    assert_eq!(
        qkv.len(),
        tokens * width,
        "Q|K|V is not as wide as the shape"
    );
    let scale = 1.0 / ((scale_terms * d) as f32).sqrt();
    let pairs = offsets.len() - 1;
    context.resize(queries.rows(tokens, pairs) * h, 0.0);
    // One task per (pair, head); each writes its own columns of its pair's rows.
    let tasks: Vec<(usize, usize, usize, usize)> = offsets
        .windows(2)
        .enumerate()
        .flat_map(|(pair, p)| (0..heads).map(move |head| (pair, p[0], p[1], head)))
        .collect();
    let out = SharedOut(context.as_mut_ptr(), context.len());
    tasks.par_iter().for_each(|&(pair, start, end, head)| {
        let len = end - start;
        let rows = &qkv[start * width..end * width];
        let (asking, first_query, first_row) = match queries {
            Queries::All => (len, 0, start),
            Queries::First => (1, 0, pair),
            Queries::Last => (1, len - 1, pair),
        };
        let part = |part: usize, from: usize, rows_of: usize| {
            let column = shape.column(part, head);
            View::columns(&rows[from * width..], rows_of, (column, d), width)
        };
        // A decoder's head reads its keys transposed and its values, each copied out
        // contiguous once for all its blocks: in place, a key's elements lie a whole fused
        // row apart (4096 floats on Qwen3-0.6B's shape). An encoder's one block reads them
        // in place: the copy measured 2% slower on BERT's narrow rows.
        let before = past.get(pair).copied().flatten();
        let earlier = before.map_or(0, |rows| rows.len() / (2 * shape.kv_heads * d));
        let copied = causal.then(|| {
            let past = before.map(|rows| past_operands(rows, earlier, shape, head));
            head_operands(past, part(1, 0, len), part(2, 0, len))
        });
        let all_keys = earlier + len;
        let block = if causal { CAUSAL_BLOCK } else { asking };
        for from in (0..asking).step_by(block) {
            let asked = block.min(asking - from);
            let first_query = first_query + from;
            let keys = if causal {
                earlier + first_query + asked
            } else {
                len
            };
            let task = HeadTask {
                q: part(0, first_query, asked),
                k: part(1, 0, keys.min(len)),
                len: keys,
                first_query: earlier + first_query,
                head,
                shape,
                scale,
            };
            let mut scores = vec![0.0f32; asked * keys];
            let (keys_t, values) = match &copied {
                Some((keys_t, values)) => (
                    View::columns(keys_t, d, (0, keys), all_keys),
                    View::rows(&values[..keys * d], keys, d),
                ),
                None => (task.k.transposed(), part(2, 0, keys)),
            };
            product(&mut scores, keys, false, (task.q, keys_t), scale, 1);
            adjust(&task, &mut scores);
            softmax_rows(&mut scores, &keys);
            let probs = View::rows(&scores, asked, keys);
            let first = (first_row + from) * h + head * d;
            // SAFETY: this task alone writes its pair's `asked` rows from `first_row +
            // from`, columns head*d..(head+1)*d of the context, borrowed mutably above
            // until every task has ended.
            unsafe {
                let (into, room) = (out.at(first), out.len() - first);
                product_into(into, room, h, false, (probs, values), 1.0, 1)
            };
        }
    });
}

/// A query head's keys and values in a past's `[tokens, K | V]` rows.
fn past_operands<'a>(
    rows: &'a [f32],
    tokens: usize,
    shape: AttentionShape,
    head: usize,
) -> (View<'a>, View<'a>) {
    let (d, kv) = (shape.head_dim, shape.kv_heads * shape.head_dim);
    let shared = head / (shape.heads / shape.kv_heads);
    (
        View::columns(rows, tokens, (shared * d, d), 2 * kv),
        View::columns(rows, tokens, (kv + shared * d, d), 2 * kv),
    )
}

/// A head's keys as `[head_dim, keys]` and its values as `[keys, head_dim]`, copied out
/// of the fused rows, after those of its past where it has one.
fn head_operands(
    past: Option<(View<'_>, View<'_>)>,
    k: View<'_>,
    v: View<'_>,
) -> (Vec<f32>, Vec<f32>) {
    let earlier = past.map_or(0, |(k, _)| k.rows);
    let (len, d) = (earlier + k.rows, k.cols);
    let mut keys_t = vec![0.0f32; d * len];
    let mut values = Vec::with_capacity(len * d);
    let sources = past.into_iter().chain([(k, v)]);
    let mut j = 0;
    for (k, v) in sources {
        for row in 0..k.rows {
            let key = &k.data[row * k.row_stride..][..d];
            for (c, &x) in key.iter().enumerate() {
                keys_t[c * len + j] = x;
            }
            values.extend_from_slice(&v.data[row * v.row_stride..][..d]);
            j += 1;
        }
    }
    (keys_t, values)
}

/// The context buffer, written by attention tasks that each own disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32, usize);

// SAFETY: the tasks that share it write disjoint elements (see `attend_each`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Where element `index` lives (a method, so that closures capture the whole
    /// `Sync` wrapper rather than its raw pointer).
    fn at(&self, index: usize) -> *mut f32 {
        assert!(index < self.1, "attention output out of bounds");
        // SAFETY: in bounds of the allocation, checked above.
        unsafe { self.0.add(index) }
    }

    fn len(&self) -> usize {
        self.1
    }
}
