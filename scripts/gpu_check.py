"""The Python half of scripts/gpu-check.sh, run on the GPU machine (torch, transformers,
an NVIDIA driver; no network). Subcommands:

  cuda-libs                      print the folders of the CUDA libraries torch brought
  weights BUNDLE_MODEL OUT_DIR   make same-shape weights there (fixed seed) beside the
                                 bundle's config.json and tokenizer files
  reference MODEL WORKLOAD OUT   pick pairs and score them with transformers on cuda:0
                                 (float32, TF32 off): {"pairs": [...], "scores": [...]}
  compare URL REFERENCE          score the reference pairs over crossenc's HTTP /score
                                 (raw scores) and print the largest difference
  gauges URL                     print crossenc's gpu_* samples from /metrics as JSON
  bench-figures BENCH_JSON       pairs/s, p50 and p99 per concurrency of a bench run
  report FIGURES OUT             write the report (Markdown) from the figures (JSON)
"""
import glob
import json
import os
import shutil
import sys
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PAIRS = 256
MAX_LENGTH = 512


def cuda_libs():
    """Folders holding libcublas & co. in torch's environment, CUDA 13 (nvidia/cu13/lib)
    and CUDA 12 (nvidia/*/lib) layouts alike, and torch's own lib folder."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    found = glob.glob(os.path.join(site, "nvidia", "cu*", "lib"))
    found += glob.glob(os.path.join(site, "nvidia", "*", "lib"))
    found.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
    print(":".join(sorted(set(d for d in found if os.path.isdir(d)))))


def weights(bundle_model, out_dir):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(bundle_model):
        shutil.copy(os.path.join(bundle_model, name), out_dir)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(out_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    # Trained weights are wider than the initializer's (std 0.02): widen them so that
    # scores spread and an error in the GPU path shows.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(2.5)
    model.save_pretrained(out_dir, safe_serialization=True)


def pick_pairs(workload):
    requests = [json.loads(line) for line in open(workload)]
    pairs = [(r["query"], d) for r in requests for d in r["documents"]]
    # Every length: the longest (truncated at 512 tokens) and the rest in order.
    longest = sorted(pairs, key=lambda p: len(p[1]), reverse=True)[:32]
    return longest + pairs[: PAIRS - len(longest)]


def reference(model_dir, workload, out):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pairs = pick_pairs(workload)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to("cuda:0").eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(pairs), 32):
            chunk = pairs[start : start + 32]
            batch = tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            ).to("cuda:0")
            logits = model(**batch).logits.float()
            scores += logits[:, 0].tolist()
    json.dump({"pairs": pairs, "scores": scores}, open(out, "w"))


def compare(url, reference_file):
    wanted = json.load(open(reference_file))
    got = []
    pairs = wanted["pairs"]
    for start in range(0, len(pairs), 64):
        body = {
            "pairs": [{"query": q, "document": d} for q, d in pairs[start : start + 64]],
            "raw_scores": True,
        }
        request = urllib.request.Request(
            url + "/score",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        got += json.load(urllib.request.urlopen(request, timeout=60))["scores"]
    worst = max(abs(a - b) for a, b in zip(got, wanted["scores"]))
    spread = max(wanted["scores"]) - min(wanted["scores"])
    print(json.dumps({"pairs": len(got), "max_error": worst, "score_range": spread}))


def gauges(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("gpu_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    print(json.dumps(samples))


def report(figures_file, out):
    f = json.load(open(figures_file))
    lines = [
        "# crossenc GPU check",
        "",
        f"- GPU: {f.get('gpu', '?')}; driver {f.get('driver', '?')}",
        f"- Binary: {f.get('binary', '?')}",
        "",
        "| dtype | max score error vs transformers f32 | c=1 pairs/s | c=1 p50 / p99 ms | "
        "c=32 pairs/s | c=32 p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in ("f32", "bf16"):
        run = f.get(dtype)
        if not run:
            continue
        cells = [dtype, f"{run['accuracy']['max_error']:.2e} (scores span {run['accuracy']['score_range']:.2f})"]
        for c in ("1", "32"):
            bench = run.get("bench", {}).get(c)
            if bench:
                cells.append(f"{bench['pairs_per_second']:.0f}")
                cells.append(f"{bench['p50_ms']:.1f} / {bench['p99_ms']:.1f}")
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## GPU gauges from /metrics (f32 server, after its load)", ""]
    for name, value in sorted(f.get("gauges", {}).items()):
        lines.append(f"- `{name}` = {value:g}")
    crash = f.get("crash")
    if crash:
        lines += [
            "",
            "## Model worker killed under load (SIGKILL, c=32)",
            "",
            f"- back on the GPU after {crash['restart_seconds']:.1f} s "
            f"(new pid {crash['new_pid']}, was {crash['old_pid']})",
            f"- requests during the run: {crash['answered']} answered, errors {crash['errors']}",
        ]
    for problem in f.get("problems", []):
        lines.append(f"- PROBLEM: {problem}")
    open(out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def bench_figures(bench_json):
    """pairs/s and latency per concurrency from `crossenc bench --json`."""
    runs = json.load(open(bench_json))
    figures = {}
    for run in runs:
        clients = str(run["mode"]["closed"]["clients"])
        latency = run["client"]["latency"]
        figures[clients] = {
            "pairs_per_second": run["client"]["pairs_per_second"],
            "p50_ms": latency["p50"] * 1e3,
            "p99_ms": latency["p99"] * 1e3,
            "errors": run["client"]["errors"],
        }
    print(json.dumps(figures))


COMMANDS = {
    "cuda-libs": cuda_libs,
    "weights": weights,
    "reference": reference,
    "compare": compare,
    "gauges": gauges,
    "report": report,
    "bench-figures": bench_figures,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
