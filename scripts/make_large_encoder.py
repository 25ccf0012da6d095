#!/usr/bin/env python3
"""Writes a BERT cross-encoder folder the size of bge-reranker-large / ms-marco-MiniLM's big
siblings (24 layers, hidden 1024, 16 heads, intermediate 4096: 335M parameters, 1.3 GB in
f32) with the default model's tokenizer, to measure memory on a large encoder without a
model hub. The weights are small pseudo-random numbers: its scores mean nothing, only its
shapes matter (the Kubernetes memory figures in deploy/ were measured on it).

Usage: scripts/make_large_encoder.py DEST [--layers 24 --hidden 1024]
Needs only Python's standard library.
"""
import argparse
import array
import json
import os
import shutil
import struct

parser = argparse.ArgumentParser()
parser.add_argument("dest")
parser.add_argument("--layers", type=int, default=24)
parser.add_argument("--hidden", type=int, default=1024)
parser.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "models", "default"))
args = parser.parse_args()
h, layers, inter, vocab = args.hidden, args.layers, 4 * args.hidden, 30522

shapes = {
    "bert.embeddings.word_embeddings.weight": [vocab, h],
    "bert.embeddings.position_embeddings.weight": [512, h],
    "bert.embeddings.token_type_embeddings.weight": [2, h],
    "bert.embeddings.LayerNorm.weight": [h],
    "bert.embeddings.LayerNorm.bias": [h],
    "bert.pooler.dense.weight": [h, h],
    "bert.pooler.dense.bias": [h],
    "classifier.weight": [1, h],
    "classifier.bias": [1],
}
for i in range(layers):
    p = f"bert.encoder.layer.{i}."
    for name in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
        shapes[p + name + ".weight"] = [h, h]
        shapes[p + name + ".bias"] = [h]
    shapes[p + "intermediate.dense.weight"] = [inter, h]
    shapes[p + "intermediate.dense.bias"] = [inter]
    shapes[p + "output.dense.weight"] = [h, inter]
    shapes[p + "output.dense.bias"] = [h]
    for norm in ["attention.output.LayerNorm", "output.LayerNorm"]:
        shapes[p + norm + ".weight"] = [h]
        shapes[p + norm + ".bias"] = [h]

header, offset = {}, 0
for name, shape in shapes.items():
    size = 4
    for d in shape:
        size *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
encoded = json.dumps(header).encode()
encoded += b" " * (-len(encoded) % 8)

os.makedirs(args.dest, exist_ok=True)
# A block of small values repeated: LayerNorm weights of 0.02 keep activations finite.
block = array.array("f", [((i * 7919) % 201 - 100) * 2e-4 for i in range(1 << 16)]).tobytes()
with open(os.path.join(args.dest, "model.safetensors"), "wb") as out:
    out.write(struct.pack("<Q", len(encoded)))
    out.write(encoded)
    left = offset
    while left:
        piece = block[: min(left, len(block))]
        out.write(piece)
        left -= len(piece)

config = json.load(open(os.path.join(args.source, "config.json")))
config.update(hidden_size=h, num_hidden_layers=layers, num_attention_heads=h // 64, intermediate_size=inter)
config["_name_or_path"] = f"crossenc/large-encoder-{layers}x{h}-random"
json.dump(config, open(os.path.join(args.dest, "config.json"), "w"), indent=2)
for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
    if os.path.exists(os.path.join(args.source, name)):
        shutil.copy(os.path.join(args.source, name), args.dest)
print(f"{args.dest}: {layers} layers x {h} hidden, {offset / 2**30:.2f} GiB of weights")
