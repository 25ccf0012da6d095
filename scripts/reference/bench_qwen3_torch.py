"""PyTorch float32 baseline for a Qwen3-Reranker folder (the causal form), as the model card runs it.

Reads a workload jsonl (lines {"query", "documents": [...]}), takes its (query, document)
pairs in file order (the first --pairs N of them), builds the Qwen3-Reranker prompt

    PREFIX + "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" + SUFFIX

with the body alone cut to --max-length minus the prefix's and suffix's tokens, and scores
batches of --batch pairs in request order, left-padded, with AutoModelForCausalLM in float32
under torch.inference_mode, taking model(**inputs).logits[:, -1, :] as the model card does.
One batch is run first as a warm-up (not timed); the time counts tokenizing, padding and
the forward passes. Prints one JSON line {"pairs", "seconds", "pairs_per_second", "tokens",
"padded_tokens", ...} ("tokens": the inputs' real tokens; "padded_tokens": the batches'
rows times their longest) and, with --out, writes the scores (logit("yes") - logit("no") per
pair, in pair order) there as a JSON list.

    /tmp/refenv/bin/python scripts/reference/bench_qwen3_torch.py /tmp/qwen3bench \\
        ../shared/bench/workload-public.jsonl --pairs 64

The folder is one scripts/make_qwen3_fixtures.py --bench-dir writes (Qwen3-Reranker-0.6B's
shape, random weights), or a real Qwen3-Reranker checkpoint.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
          "and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
          "<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def read_pairs(path, limit):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            pairs += [(r["query"], d) for d in r["documents"]]
            if limit is not None and len(pairs) >= limit:
                break
    return pairs if limit is None else pairs[:limit]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("workload")
    parser.add_argument("--pairs", type=int, default=None, help="the first N pairs in file order (default all)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--out", default=None, help="write the yes - no scores there (JSON list)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    prefix = tok.encode(PREFIX, add_special_tokens=False)
    suffix = tok.encode(SUFFIX, add_special_tokens=False)
    budget = args.max_length - len(prefix) - len(suffix)

    pairs = read_pairs(args.workload, args.pairs)
    texts = [f"<Instruct>: {args.instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]

    def encode(chunk):
        ids = tok(chunk, padding=False, truncation=True, max_length=budget, add_special_tokens=False,
                  return_attention_mask=False)["input_ids"]
        ids = [prefix + x + suffix for x in ids]
        return tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def score(chunk):
        enc = encode(chunk)
        logits = model(**enc).logits[:, -1, :]
        mask = enc["attention_mask"]
        return (logits[:, yes] - logits[:, no]).tolist(), int(mask.sum()), mask.numel()

    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    with torch.inference_mode():
        score(batches[0])  # warm-up
        scores, tokens, padded = [], 0, 0
        start = time.perf_counter()
        for chunk in batches:
            s, n, p = score(chunk)
            scores += s
            tokens += n
            padded += p
        seconds = time.perf_counter() - start

    print(json.dumps({"pairs": len(pairs), "seconds": round(seconds, 3),
                      "pairs_per_second": round(len(pairs) / seconds, 3), "tokens": tokens,
                      "padded_tokens": padded, "batch": args.batch, "threads": args.threads,
                      "max_length": args.max_length, "torch": torch.__version__}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(scores, f)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
