"""Fits the default model's classification head so that its scores rank.

Usage: fit_default_head.py MODEL_DIR WORKLOAD.jsonl

MODEL_DIR is the folder build_default_model.py wrote (all-MiniLM-L6-v2's encoder, a
placeholder head). The encoder stays as it is; only `classifier` (384 -> 1, on the
pooler's output, as BertForSequenceClassification reads it) is fitted: a logistic
regression on the even-numbered queries of the workload (query, its relevant document:
1; its other documents: 0). The odd-numbered queries are held out: the end-to-end test
`the_default_model_ranks_held_out_queries` measures the served model on them.

Deterministic: the encoder's features are computed by a plain numpy forward pass, the
fit is full-batch gradient descent from zeros (no random numbers), and the weights are
rounded to 1e-4 so that the last bits of a machine's BLAS do not reach the folder.
Needs numpy and tokenizers (fetch-model.sh installs them in a venv). About 30 s on 2
cores.
"""
import json
import os
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from build_default_model import read_safetensors, write_safetensors  # noqa: E402

MAX_LENGTH = 128  # enough for the head's features; the served model reads 512
L2 = 0.01
STEPS = 2000
STEP_SIZE = 0.5
BATCH = 32


def erf(x):
    """Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


class Encoder:
    """BertModel's forward pass up to the pooler, in numpy float32."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
            raw = read_safetensors(f.read())
        self.w = {name: np.frombuffer(data, dtype=np.float32).reshape(shape)
                  for name, (dtype, shape, data) in raw.items() if dtype == "F32"}

    def linear(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def norm(self, x, name):
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.config["layer_norm_eps"])

    def pooled(self, ids, types, mask):
        """[pairs, width] ids, type ids and 0/1 mask -> [pairs, hidden] pooler output."""
        c, w = self.config, self.w
        heads = c["num_attention_heads"]
        pairs, width = ids.shape
        x = (w["bert.embeddings.word_embeddings.weight"][ids]
             + w["bert.embeddings.position_embeddings.weight"][:width][None]
             + w["bert.embeddings.token_type_embeddings.weight"][types])
        x = self.norm(x, "bert.embeddings.LayerNorm")
        bias = np.where(mask[:, None, None, :] == 1, 0.0, np.finfo(np.float32).min).astype(np.float32)
        d = c["hidden_size"] // heads
        for i in range(c["num_hidden_layers"]):
            p = f"bert.encoder.layer.{i}."
            split = lambda t: t.reshape(pairs, width, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
            q = split(self.linear(x, p + "attention.self.query"))
            k = split(self.linear(x, p + "attention.self.key"))
            v = split(self.linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(pairs, width, -1)
            x = self.norm(self.linear(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            inner = self.linear(x, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
            x = self.norm(self.linear(inner.astype(np.float32), p + "output.dense") + x, p + "output.LayerNorm")
        return np.tanh(self.linear(x[:, 0], "bert.pooler.dense"))


def features(encoder, tokenizer, requests):
    """Pooler outputs and 0/1 labels of every (query, document) pair of `requests`,
    computed in batches of pairs of similar length (little padding)."""
    pairs = [(r["query"], d) for r in requests for d in r["documents"]]
    labels = np.array([1.0 if i in r["relevant"] else 0.0 for r in requests for i in range(len(r["documents"]))])
    encodings = tokenizer.encode_batch(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(encodings[i].ids))
    pooled = np.zeros((len(pairs), encoder.config["hidden_size"]))
    for start in range(0, len(order), BATCH):
        batch = order[start:start + BATCH]
        width = max(len(encodings[i].ids) for i in batch)
        pad = lambda i, field: getattr(encodings[i], field) + [0] * (width - len(encodings[i].ids))  # noqa: E731
        ids = np.array([pad(i, "ids") for i in batch])
        types = np.array([pad(i, "type_ids") for i in batch])
        mask = np.array([pad(i, "attention_mask") for i in batch])
        pooled[batch] = encoder.pooled(ids, types, mask)
    return pooled, labels


def fit(x, y):
    """Logistic regression, positives weighted as all negatives together, L2 on the weights."""
    weight = np.where(y == 1, (y == 0).sum() / (y == 1).sum(), 1.0)
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = (p - y) * weight
        w -= STEP_SIZE * (x.T @ g / len(y) + L2 * w)
        b -= STEP_SIZE * g.mean()
    return np.round(w, 4), round(b, 4)


def main(model_dir, workload_path):
    requests = [json.loads(line) for line in open(workload_path)]
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH, strategy="longest_first")
    encoder = Encoder(model_dir)
    x, y = features(encoder, tokenizer, requests[0::2])
    w, b = fit(x, y)

    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "rb") as f:
        tensors = read_safetensors(f.read())
    hidden = len(w)
    tensors["classifier.weight"] = ("F32", [1, hidden], struct.pack(f"<{hidden}f", *w))
    tensors["classifier.bias"] = ("F32", [1], struct.pack("<1f", b))
    write_safetensors(path, tensors)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    config["_name_or_path"] = "crossenc/all-MiniLM-L6-v2-fitted-head"
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    accuracy = ((x @ w + b > 0) == (y == 1)).mean()
    print(f"fit-default-head: {len(y)} training pairs, accuracy {accuracy:.3f}, |w| {np.linalg.norm(w):.2f}",
          file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
