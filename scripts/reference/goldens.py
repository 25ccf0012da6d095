"""Writes tests/fixtures/goldens.jsonl: reference raw logits from Hugging Face transformers.

Run by hand, in a venv with torch and transformers (CI does not need them):

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers
    scripts/fetch-model.sh
    /tmp/refenv/bin/python scripts/reference/goldens.py models/default ../shared/bench/workload-public.jsonl

Rows: {"query", "document", "score" (raw logit, float32 forward pass), "tokens" (after
truncation)}. The pairs: every document of the first requests of the workload, the longest
documents of the rest (past 512 tokens, so truncation is exercised), and hand-written edge
cases: an empty document, accents, CJK, emoji, a one-word pair.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

MAX_LENGTH = 512
FIRST_REQUESTS = 6
LONGEST = 12
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "goldens.jsonl")

EDGE_CASES = [
    ("what is a cross-encoder", ""),
    ("café crème brûlée recipe", "Crème brûlée: a rich custard base topped with caramelized sugar, served in a café."),
    ("東京の天気", "東京は今日、晴れのち曇り。最高気温は二十度です。"),
    ("如何学习中文", "学习中文需要每天练习听、说、读、写。"),
    ("best pizza 🍕 near me", "🍕🍕 Mario's serves wood-fired pizza 🔥 until midnight 🌙"),
    ("Ünïcödé nörmälizätiön", "Ünïcödé text with dïäcritics, ligatures ﬁ ﬂ and full-width ＡＢＣ."),
    ("x", "y"),
    ("a long query " * 40, "a short document"),
]


def pick_pairs(workload_path):
    requests = [json.loads(line) for line in open(workload_path)]
    pairs = [(r["query"], d) for r in requests[:FIRST_REQUESTS] for d in r["documents"]]
    rest = [(r["query"], d) for r in requests[FIRST_REQUESTS:] for d in r["documents"]]
    rest.sort(key=lambda p: len(p[1]), reverse=True)
    return pairs + rest[:LONGEST] + EDGE_CASES


def main(model_dir, workload_path):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    pairs = pick_pairs(workload_path)
    rows = []
    with torch.inference_mode():
        for i in range(0, len(pairs), 32):
            batch = pairs[i:i + 32]
            enc = tok([q for q, _ in batch], [d for _, d in batch], padding=True,
                      truncation="longest_first", max_length=MAX_LENGTH, return_tensors="pt")
            logits = model(**enc).logits[:, 0].tolist()
            tokens = enc["attention_mask"].sum(dim=1).tolist()
            for (q, d), s, n in zip(batch, logits, tokens):
                rows.append({"query": q, "document": d, "score": s, "tokens": int(n)})
    with open(OUT, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {os.path.normpath(OUT)}; "
          f"{sum(r['tokens'] >= MAX_LENGTH for r in rows)} truncated at {MAX_LENGTH}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
