"""Makes tiny Qwen3-Reranker folders, in both published forms, with reference logits, for tests.

Writes tests/fixtures/models/<name>/ for

    qwen3-reranker          Qwen3ForCausalLM as Qwen/Qwen3-Reranker-* publish it: tied word
                            embeddings (no lm_head.weight in the files), bfloat16 weights in
                            2 or 3 safetensors shards with model.safetensors.index.json, and
                            config.json as the installed transformers (5) writes it (`dtype`,
                            `rope_parameters`). Scored by the model card's recipe: the prompt
                            below, the last position's logits, "yes" against "no".
    qwen3-reranker-seq-cls  the converted form (as tomaarsen/Qwen3-Reranker-0.6B-seq-cls):
                            Qwen3ForSequenceClassification, 1 label, the same backbone weights
                            (the bfloat16 values, in float32, one model.safetensors) and
                            score.weight = lm_head["yes"] - lm_head["no"], no bias; config.json
                            in transformers 4's form (`torch_dtype`, top-level `rope_theta`).

each with tokenizer.json, tokenizer_config.json, goldens.jsonl and a README.md. The model is
small (hidden 32, 2 layers, 4 query heads and 2 key/value heads of head_dim 16, so the
attention's width 64 is not the hidden size, SwiGLU 64, RoPE theta 1e6, q_norm/k_norm) and
the tokenizer is a byte-level BPE of ~2000 tokens trained here on the public workload's text
(and the prompt's own words, which a real Qwen vocabulary holds whole: see prompt_words),
laid out as Qwen2/Qwen3's tokenizer.json is: NFC normalizer, Qwen2's Split regex (isolated)
then ByteLevel without its own regex, no BOS/EOS added, <|endoftext|> <|im_start|> <|im_end|>
special and <think> </think> plain added tokens after the trained vocabulary, "yes" and "no"
one token each. config.json's vocab_size is past the tokenizer's length (the embedding table
has rows no token uses), as Qwen's is.

The prompt (the Qwen3-Reranker model card's):

    PREFIX + "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" + SUFFIX

with the body alone cut (right truncation) to MAX_LENGTH - len(PREFIX ids) - len(SUFFIX ids)
tokens, so every input is at most MAX_LENGTH = 128 tokens. The causal form's score is
softmax([logit("no"), logit("yes")])[1] at the last position, i.e. sigmoid(yes - no); the
seq-cls form's single logit is that difference.

goldens.jsonl rows: {"query", "document", "instruction" (null: the default instruction),
"logits" ([logit_no, logit_yes] for the causal form, [score logit] for seq-cls, transformers
float32 from the bfloat16 weights upcast), "tokens" (the input's length), "ids" (the input)}.
Each pair is computed alone (no padding). The script checks that a left-padded batch, as the
model card runs, gives the same logits, that the seq-cls logit is the causal yes - no
difference, that the bare `tokenizers` library reading tokenizer.json gives transformers' ids
for the prefix, the (cut) body and the suffix, and that transformers 5 reads the
transformers-4-form config.json with rope_theta 1e6.

With --bench-dir [DIR] it also writes the folder DIR (default /tmp/qwen3bench): Qwen3-Reranker-0.6B's
shape (28 layers, hidden 1024, 16 query and 8 key/value heads of head_dim 128, SwiGLU 3072,
40960 positions, tied embeddings) with random weights (std 0.02) and a tokenizer of the same
kind trained towards 8000 tokens, float32, no goldens: ~1.8 GB, for speed benchmarks only.

Deterministic, byte for byte: fixed training text (the workload file, in file order),
torch.manual_seed, a byte-level BPE (fixed alphabet: the trainer's runs agree). Run by hand
in the reference venv:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/refenv/bin/python scripts/make_qwen3_fixtures.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/refenv/bin/python scripts/make_qwen3_fixtures.py \\
        --bench-dir /tmp/qwen3bench

(torch, transformers >= 5, tokenizers.)
"""
import argparse
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers)
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_arch_fixtures import EDGE_CASES, read_workload, training_text  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WORKLOAD = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "workload-public.jsonl"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
SCRIPT = "scripts/make_qwen3_fixtures.py"
CAUSAL, SEQ_CLS = "qwen3-reranker", "qwen3-reranker-seq-cls"

MAX_LENGTH = 128  # the whole input: prefix + cut body + suffix
BATCH = 16
PER_QUERY = 12  # workload documents of each of the first queries in the goldens
TARGET_STD = 2.0  # spread of the yes - no differences over the goldens, as a trained reranker's
INIT_RANGE = 0.35  # not the usual 0.02 (see make_arch_fixtures.py)
PERTURB = 0.2  # RMSNorm gains moved off 1.0 (q_norm and k_norm too)
SEED = 11
MAX_SHARD_SIZE = "40KB"  # the bfloat16 embedding table alone is ~130 KB, a layer ~25 KB
VOCAB = 2000  # the trained byte-level BPE's size (256 bytes + merges)
PROMPT_WEIGHT = 50  # copies of the prompt's own words in the training text (see prompt_words)
BENCH_VOCAB = 8000

# Qwen2's pre-tokenizer regex (Qwen3 keeps it).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen's order, after the vocabulary
PLAIN_ADDED = ["<think>", "</think>"]  # added tokens, special=False, as Qwen3's
ONE_TOKEN = ["yes", "no"]

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
          "and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
          "<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CUSTOM_INSTRUCTION = "Judge whether the passage is about Python programming"

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=64, max_position_embeddings=512)
QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, max_position_embeddings=40960)


# ---------------------------------------------------------------------------- text

def body(query, doc, instruction=None):
    return f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"


def pick_pairs(requests):
    """(query, document, instruction) triples: twelve workload documents of each of the first
    three queries, shortest to longest (the longer ones are cut), documents far past the
    limit, a query that fills the body on its own, make_arch_fixtures.py's edge cases (empty
    document, accents, CJK, emoji, whitespace), and some of them again with a custom
    instruction."""
    pairs = []
    for r in requests[:3]:
        docs = sorted(r["documents"], key=len)
        pairs += [(r["query"], docs[round(i * (len(docs) - 1) / (PER_QUERY - 1))], None)
                  for i in range(PER_QUERY)]
    for i, r in enumerate(requests[5:7]):
        pairs.append((r["query"], " ".join(sorted(r["documents"], key=len, reverse=True)[:3 + i]), None))
    pairs.append((" ".join(r["query"] for r in requests[9:25]), requests[9]["documents"][0], None))
    pairs += [(q, d, None) for q, d in EDGE_CASES]
    again = pairs[0:PER_QUERY:3] + [pairs[PER_QUERY - 1]] + [(q, d, None) for q, d in EDGE_CASES[:3]]
    pairs += [(q, d, CUSTOM_INSTRUCTION) for q, d, _ in again]
    return pairs


# ----------------------------------------------------------------------- tokenizer

def prompt_words():
    """The prompt's plain text (its special tokens left out), which a real Qwen vocabulary
    holds as whole words ("Judge", "Document", "assistant", "\\n\\n"). Trained on the workload
    alone, ~2000 tokens spell it in pieces: the fixed prompt takes 75 of the 128 tokens and
    every golden's document is cut away. PROMPT_WEIGHT copies of it follow the workload's
    text: the prompt takes ~47 tokens, and "yes" comes out one token by itself."""
    system = PREFIX.removeprefix(SPECIALS[1]).partition(SPECIALS[2])[0]
    return [system, "\nuser\n", "\nassistant\n", "\n\n", body("", "", None), body("", "", CUSTOM_INSTRUCTION)]


def merge_pair(model, a, b):
    """Appends the merge a + b (last priority) and its token, in the merges' own format."""
    model["vocab"][a + b] = len(model["vocab"])
    model["merges"].append([a, b] if not model["merges"] or isinstance(model["merges"][0], list)
                           else f"{a} {b}")


def ensure_one_token(tok, words):
    """Makes each word one token: the pieces the trained merges leave it in are merged left
    to right by merges appended after the trained ones (so nothing else they tokenize
    changes unless it contains the word)."""
    spec = json.loads(tok.to_str())
    added = []
    for word in words:
        pieces = tok.encode(word, add_special_tokens=False).tokens
        if len(pieces) == 1:
            continue
        left = pieces[0]
        for right in pieces[1:]:
            merge_pair(spec["model"], left, right)
            left += right
        added.append((word, pieces))
        tok = Tokenizer.from_str(json.dumps(spec))
    return tok, added


def qwen_fields(tok):
    """The fields Qwen's tokenizer.json spells out that the Python bindings leave at their
    defaults (the ByteLevel decoder's flags are not taken by its constructor)."""
    spec = json.loads(tok.to_str())
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    return Tokenizer.from_str(json.dumps(spec))


def bpe_tokenizer(text, vocab_size):
    """Byte-level BPE laid out as Qwen2/Qwen3's tokenizer.json, the trained vocabulary
    first, then the added tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok, made = ensure_one_token(tok, ONE_TOKEN)
    tok = qwen_fields(tok)
    # Qwen's post-processor is a ByteLevel one: offsets only, no tokens added.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    n = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED])
    for i, t in enumerate(SPECIALS + PLAIN_ADDED):
        assert tok.token_to_id(t) == n + i, (t, tok.token_to_id(t), n + i)
    for word in ONE_TOKEN:
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    return tok, made


def wrap_tokenizer(tok):
    """The transformers tokenizer a user's folder is saved from (tokenizer_config.json)."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>", bos_token=None,
        unk_token=None, padding_side="left", model_max_length=131072, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"])
    assert len(wrapped) == tok.get_vocab_size(with_added_tokens=True), (len(wrapped), tok.get_vocab_size())
    return wrapped


def save_tokenizer(wrapped, dest):
    """Saves the tokenizer files without the truncation and padding that transformers' calls
    leave set on the backend tokenizer (they would go into tokenizer.json: Qwen's has none)."""
    wrapped.backend_tokenizer.no_truncation()
    wrapped.backend_tokenizer.no_padding()
    wrapped.save_pretrained(dest)
    spec = json.load(open(os.path.join(dest, "tokenizer.json")))
    assert spec["truncation"] is None and spec["padding"] is None, (spec["truncation"], spec["padding"])
    assert spec["post_processor"]["type"] == "ByteLevel", spec["post_processor"]


def padded_vocab(n):
    """The embedding table's rows: the tokenizer's length rounded past the next multiple of 8."""
    return (n // 8 + 1) * 8


# ------------------------------------------------------------------------ prompts

class Prompt:
    """The model card's input: fixed prefix ids + body ids cut to the budget + suffix ids."""

    def __init__(self, tok, max_length=MAX_LENGTH):
        self.tok = tok
        self.prefix = tok.encode(PREFIX, add_special_tokens=False)
        self.suffix = tok.encode(SUFFIX, add_special_tokens=False)
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        self.yes = tok.convert_tokens_to_ids("yes")
        self.no = tok.convert_tokens_to_ids("no")

    def body_ids(self, triples):
        texts = [body(q, d, i) for q, d, i in triples]
        return self.tok(texts, truncation=True, max_length=self.budget, add_special_tokens=False,
                        padding=False, return_attention_mask=False)["input_ids"]

    def ids(self, triples):
        return [self.prefix + ids + self.suffix for ids in self.body_ids(triples)]

    def batch(self, ids):
        """Left padding (the folder's padding_side), as the model card's tokenizer.pad."""
        return self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def last_logits(model, enc):
    out = model(**enc).logits
    return out[:, -1, :] if out.dim() == 3 else out


def run(model, prompt, all_ids, batch):
    """Final logits of each input (the causal model's last position, the seq-cls score)."""
    rows = []
    with torch.inference_mode():
        for i in range(0, len(all_ids), batch):
            rows.append(last_logits(model, prompt.batch(all_ids[i:i + batch])).float())
    return torch.cat(rows)


def yes_no(logits, prompt):
    return logits[:, [prompt.no, prompt.yes]]


# -------------------------------------------------------------------------- models

def qwen3_config(vocab_size, sizes, prompt_tok, **extra):
    return Qwen3Config(
        vocab_size=vocab_size, **sizes, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_scaling=None, tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
        max_window_layers=sizes["num_hidden_layers"], attention_bias=False, attention_dropout=0.0,
        use_cache=True, bos_token_id=prompt_tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=prompt_tok.convert_tokens_to_ids("<|im_end|>"), **extra)


def build_causal(cfg, init_range, perturb, seed):
    cfg.initializer_range = init_range
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).float().eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "not tied"
    if perturb:
        with torch.no_grad():
            for name, module in model.named_modules():
                if type(module).__name__.endswith("RMSNorm"):
                    module.weight.add_(torch.randn_like(module.weight) * perturb)
    return model


def calibrate(model, prompt, all_ids, rounds=4):
    """Sets the "yes" and "no" rows of the (tied) embedding table about their midpoint so
    that the yes - no differences over the goldens centre on 0 with std TARGET_STD, as a
    trained reranker's do (a random model's sit far to one side, every score ~0 or ~1):
    the difference of the two rows loses its component along the mean final hidden state
    and is scaled. The two rows are also inputs (the prompt says "yes" or "no"), so this is
    repeated a few times."""
    emb = model.model.embed_tokens.weight
    with torch.inference_mode():
        for r in range(rounds):
            last = torch.cat([model.model(input_ids=torch.tensor([x])).last_hidden_state[:, -1]
                              for x in all_ids])
            yes, no = emb[prompt.yes].clone(), emb[prompt.no].clone()
            if r == 0:
                raw = (last @ (yes - no)).std().item(), (last @ (yes - no)).mean().item()
            mid, diff = (yes + no) / 2, yes - no
            mean = last.mean(dim=0)
            diff -= (mean @ diff) / (mean @ mean) * mean
            diff *= TARGET_STD / (last @ diff).std()
            emb[prompt.yes], emb[prompt.no] = mid + diff / 2, mid - diff / 2
    return raw, diff.norm().item() / (yes - no).norm().item()


def fresh(dest):
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)


def rewrite_json(path, change):
    cfg = json.load(open(path))
    cfg = change(cfg) or cfg
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def transformers4_form(cfg):
    """config.json as transformers 4.x wrote it and the published checkpoints have it."""
    cfg["torch_dtype"] = cfg.pop("dtype")
    rope = cfg.pop("rope_parameters")
    assert rope.get("rope_type", "default") == "default" and set(rope) <= {"rope_type", "rope_theta"}, rope
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["rope_scaling"] = None
    cfg.pop("layer_types", None)  # 4.51's Qwen3 configs have none: it follows use_sliding_window
    cfg["transformers_version"] = "4.51.0"
    return cfg


# ------------------------------------------------------------------------- goldens

def check_raw_tokenizer(dest, prompt, triples, ids):
    """The bare tokenizers library, reading tokenizer.json as the Rust server does, gives
    transformers' ids for the prefix, the body cut to its budget, and the suffix."""
    raw = Tokenizer.from_file(os.path.join(dest, "tokenizer.json"))
    raw.no_padding()
    assert raw.encode(PREFIX, add_special_tokens=False).ids == prompt.prefix
    assert raw.encode(SUFFIX, add_special_tokens=False).ids == prompt.suffix
    assert raw.encode(PREFIX, add_special_tokens=True).ids == prompt.prefix, "a token added"
    assert raw.decode(prompt.prefix + prompt.suffix, skip_special_tokens=False) == PREFIX + SUFFIX
    raw.enable_truncation(prompt.budget, strategy="longest_first", direction="right")
    for (q, d, i), expected in zip(triples, ids):
        got = prompt.prefix + raw.encode(body(q, d, i), add_special_tokens=False).ids + prompt.suffix
        assert got == expected, f"tokenizer.json and transformers disagree on {q[:40]!r}/{d[:40]!r}"


def goldens(dest, model_cls, triples, causal):
    """Reloads the folder as a user would, in float32, and scores each input alone and in
    left-padded batches (the goldens' logits: "no" and "yes" of the causal form's last
    position, the seq-cls form's one); checks the bare tokenizer.json's ids."""
    tok = AutoTokenizer.from_pretrained(dest)
    assert tok.padding_side == "left"
    model = model_cls.from_pretrained(dest, dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(tok) <= model.config.vocab_size
    prompt = Prompt(tok)
    pick = (lambda x: yes_no(x, prompt)) if causal else (lambda x: x)
    ids = prompt.ids(triples)
    alone = pick(run(model, prompt, ids, 1))
    batched = pick(run(model, prompt, ids, BATCH))
    worst = (alone - batched).abs().max().item()
    check_raw_tokenizer(dest, prompt, triples, ids)
    noise = (alone - pick(run(model.double(), prompt, ids, 1))).abs().max().item()
    model.float()
    return model, prompt, ids, alone, worst, noise


def write_goldens(dest, triples, ids, logits):
    with open(os.path.join(dest, "goldens.jsonl"), "w", encoding="utf-8") as f:
        for (q, d, i), row, x in zip(triples, logits.tolist(), ids):
            f.write(json.dumps({"query": q, "document": d, "instruction": i, "logits": row,
                                "tokens": len(x), "ids": x}, ensure_ascii=False) + "\n")


def folder_size(dest):
    return {f: os.path.getsize(os.path.join(dest, f)) for f in sorted(os.listdir(dest))}


def sensitivity(model, prompt, all_ids, reference):
    """How far the yes - no differences move when one piece of the architecture is got
    wrong: a test's tolerance must be far below these."""
    out = {}
    diff = lambda m: yes_no(run(m, prompt, all_ids, BATCH), prompt).diff(dim=1)[:, 0]  # noqa: E731
    ref = reference.diff(dim=1)[:, 0]
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for label, names in [("q_norm/k_norm gains at 1", ("q_norm", "k_norm")),
                             ("layer norm gains at 1", ("input_layernorm", "post_attention_layernorm"))]:
            for n, p in model.named_parameters():
                if any(k in n for k in names):
                    p.fill_(1.0)
            out[label] = (diff(model) - ref).abs().max().item()
            for n, p in model.named_parameters():
                p.copy_(saved[n])
        inv = model.model.rotary_emb.inv_freq.clone()
        dim = inv.numel() * 2
        model.model.rotary_emb.inv_freq.copy_(1.0 / 10000.0 ** (torch.arange(0, dim, 2).float() / dim))
        out["rope_theta 10000"] = (diff(model) - ref).abs().max().item()
        model.model.rotary_emb.inv_freq.copy_(inv)
    return out


def make_fixtures(text, triples):
    causal_dest, cls_dest = os.path.join(FIXTURES, CAUSAL), os.path.join(FIXTURES, SEQ_CLS)
    tok, made = bpe_tokenizer(text, VOCAB)
    wrapped = wrap_tokenizer(tok)
    prompt = Prompt(wrapped)
    n_tok = len(wrapped)
    cfg = qwen3_config(padded_vocab(n_tok), TINY, wrapped)
    model = build_causal(cfg, INIT_RANGE, PERTURB, SEED)
    raw_std, factor = calibrate(model, prompt, prompt.ids(triples))

    # 1. The published form: bfloat16, sharded, transformers 5's config.json.
    fresh(causal_dest)
    model.to(torch.bfloat16).save_pretrained(causal_dest, max_shard_size=MAX_SHARD_SIZE)
    save_tokenizer(wrapped, causal_dest)
    files = sorted(os.listdir(causal_dest))
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert 2 <= len(shards) <= 3 and "model.safetensors.index.json" in files, files
    index = json.load(open(os.path.join(causal_dest, "model.safetensors.index.json")))
    assert not any(k.startswith("lm_head") for k in index["weight_map"]), "lm_head saved"
    ccfg = json.load(open(os.path.join(causal_dest, "config.json")))
    assert ccfg["dtype"] == "bfloat16" and ccfg["tie_word_embeddings"] is True, ccfg
    assert ccfg["rope_parameters"]["rope_theta"] == 1000000.0, ccfg.get("rope_parameters")
    assert "rope_theta" not in ccfg and "torch_dtype" not in ccfg, ccfg

    causal, prompt, ids, c_pair, c_worst, c_noise = goldens(causal_dest, AutoModelForCausalLM, triples, True)
    assert c_worst <= 1e-5, f"left padding changes the causal logits by {c_worst}"
    assert len(prompt.tok.encode("yes", add_special_tokens=False)) == 1
    assert len(prompt.tok.encode("no", add_special_tokens=False)) == 1
    assert max(len(x) for x in ids) == MAX_LENGTH, "no golden is cut"
    write_goldens(causal_dest, triples, ids, c_pair)

    # 2. The converted form: the same backbone (the bfloat16 values, now float32), one row.
    backbone = causal.model.state_dict()
    lm = causal.lm_head.weight.detach()
    scfg = qwen3_config(cfg.vocab_size, TINY, wrapped, num_labels=1, pad_token_id=wrapped.pad_token_id,
                        architectures=["Qwen3ForSequenceClassification"])
    scfg.initializer_range = cfg.initializer_range
    seq = Qwen3ForSequenceClassification(scfg).float().eval()
    seq.model.load_state_dict(backbone, strict=True)
    with torch.no_grad():
        seq.score.weight.copy_((lm[prompt.yes] - lm[prompt.no])[None, :])
    assert seq.score.bias is None
    fresh(cls_dest)
    seq.save_pretrained(cls_dest)
    save_tokenizer(wrapped, cls_dest)
    assert os.path.isfile(os.path.join(cls_dest, "model.safetensors")), os.listdir(cls_dest)
    scfg_json = rewrite_json(os.path.join(cls_dest, "config.json"), transformers4_form)
    assert scfg_json["torch_dtype"] == "float32" and "rope_parameters" not in scfg_json
    loaded = AutoConfig.from_pretrained(cls_dest)
    assert loaded.rope_parameters["rope_theta"] == 1000000.0, loaded.rope_parameters
    assert loaded.pad_token_id == wrapped.pad_token_id and loaded.num_labels == 1

    _, _, sids, s_logits, s_worst, s_noise = goldens(
        cls_dest, AutoModelForSequenceClassification, triples, False)
    assert sids == ids
    assert s_worst <= 1e-5, f"left padding changes the seq-cls logits by {s_worst}"
    c_diff = c_pair.diff(dim=1)
    agree = (s_logits - c_diff).abs().max().item()
    assert agree <= 1e-5, f"seq-cls logit and causal yes - no differ by {agree}"
    write_goldens(cls_dest, triples, ids, s_logits)

    sens = sensitivity(causal, prompt, ids, c_pair)
    for dest, what in [(causal_dest, "causal"), (cls_dest, "seq-cls")]:
        write_readme(dest, what, cfg, n_tok, made, prompt, shards)

    d = c_diff[:, 0]
    tokens = [len(x) for x in ids]
    print(f"== tokenizer: {n_tok} tokens (BPE {n_tok - len(SPECIALS) - len(PLAIN_ADDED)} + "
          f"{len(SPECIALS) + len(PLAIN_ADDED)} added), config vocab_size {cfg.vocab_size}; "
          f"yes {prompt.yes}, no {prompt.no}, <|endoftext|> {wrapped.pad_token_id}, "
          f"<|im_end|> {wrapped.eos_token_id}; made one token: {made or 'none needed'}")
    print(f"   prefix {len(prompt.prefix)} tokens, suffix {len(prompt.suffix)} tokens, body budget "
          f"{prompt.budget}; {len(triples)} goldens, {sum(t >= MAX_LENGTH for t in tokens)} cut, "
          f"tokens {min(tokens)}..{max(tokens)}")
    print(f"   suffix pieces: {prompt.tok.convert_ids_to_tokens(prompt.suffix)}")
    print(f"   calibration: raw yes-no std {raw_std[0]:.4f} mean {raw_std[1]:.4f}; yes - no rows "
          f"x{factor:.3f} in the last round")
    print(f"== {CAUSAL}: shards {shards}; logit_no {c_pair[:, 0].min():.3f}..{c_pair[:, 0].max():.3f}, "
          f"logit_yes {c_pair[:, 1].min():.3f}..{c_pair[:, 1].max():.3f}; yes-no min {d.min():.3f} "
          f"max {d.max():.3f} mean {d.mean():.3f} std {d.std():.3f} (first query's documents: "
          f"std {d[:PER_QUERY].std():.3f}); batch vs alone {c_worst:.2e}; f32 vs f64 {c_noise:.2e}")
    print(f"   sensitivity (max change of yes-no): {json.dumps({k: round(v, 4) for k, v in sens.items()})}")
    print(f"   files: {folder_size(causal_dest)} = {sum(folder_size(causal_dest).values())} bytes")
    print(f"== {SEQ_CLS}: logit {s_logits.min():.3f}..{s_logits.max():.3f}; vs causal yes-no {agree:.2e}; "
          f"batch vs alone {s_worst:.2e}; f32 vs f64 {s_noise:.2e}")
    print(f"   files: {folder_size(cls_dest)} = {sum(folder_size(cls_dest).values())} bytes")
    return tok


def write_readme(dest, what, cfg, n_tok, made, prompt, shards):
    common = (f"hidden 32, 2 layers, 4 query / 2 key-value heads of head_dim 16, rope_theta 1e6, "
              f"tied embeddings; byte-level BPE tokenizer of {n_tok} tokens trained on the public "
              f"workload and the prompt's words, config vocab_size {cfg.vocab_size}; \"yes\" = {prompt.yes}, \"no\" = "
              f"{prompt.no}, <|endoftext|> = {prompt.tok.pad_token_id}")
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"Made by `{SCRIPT}` (do not edit by hand) with transformers {transformers.__version__}, "
                f"torch {torch.__version__}.\n\n")
        if what == "causal":
            f.write(f"A seeded random Qwen3ForCausalLM in Qwen/Qwen3-Reranker-*'s published form ({common}): "
                    f"bfloat16 weights in {len(shards)} shards ({', '.join(shards)}) with "
                    f"model.safetensors.index.json and no lm_head.weight, config.json as transformers "
                    f"{transformers.__version__} writes it (`dtype`, `rope_parameters`).\n\n"
                    f"goldens.jsonl: the model card's prompt ({len(prompt.prefix)} prefix tokens, the body "
                    f"cut to {prompt.budget} tokens, {len(prompt.suffix)} suffix tokens: at most "
                    f"{MAX_LENGTH}), each input alone, transformers float32 from the bfloat16 weights "
                    f"upcast: \"logits\" = [logit(\"no\"), logit(\"yes\")] at the last position; the "
                    f"score is softmax of the two, i.e. sigmoid(yes - no). \"instruction\" null is the "
                    f"default one.\n")
        else:
            f.write(f"The converted form of ../{CAUSAL} (as tomaarsen/Qwen3-Reranker-0.6B-seq-cls): "
                    f"Qwen3ForSequenceClassification, 1 label, the same backbone weights (the bfloat16 "
                    f"values, stored in float32 in one model.safetensors), score.weight = "
                    f"lm_head[\"yes\"] - lm_head[\"no\"] and no bias, pad_token_id = <|endoftext|> "
                    f"({common}). config.json is in transformers 4's form as the published checkpoints "
                    f"have it: `torch_dtype`, top-level `rope_theta`, `rope_scaling` null, no "
                    f"`rope_parameters` nor `layer_types` (transformers_version set to 4.51.0).\n\n"
                    f"goldens.jsonl: the same inputs as ../{CAUSAL}'s (the model card's prompt at most "
                    f"{MAX_LENGTH} tokens), \"logits\" = [the score logit], which equals ../{CAUSAL}'s "
                    f"yes - no within 1e-5.\n")
        if made:
            f.write(f"\nThe trained merges left {', '.join(repr(w) for w, _ in made)} in pieces; merges "
                    f"appended after the trained ones make each one token.\n")


# ------------------------------------------------------------------------- bench

def make_bench(dest, text):
    """Qwen3-Reranker-0.6B's shape, random weights, float32: speed benchmarks only."""
    tok, _ = bpe_tokenizer(text, BENCH_VOCAB)
    wrapped = wrap_tokenizer(tok)
    cfg = qwen3_config(padded_vocab(len(wrapped)), QWEN3_06B, wrapped)
    model = build_causal(cfg, 0.02, 0.0, SEED)
    if os.path.isdir(dest) and os.listdir(dest) and not os.path.isfile(os.path.join(dest, "config.json")):
        sys.exit(f"{dest} holds something other than a model folder: not replacing it")
    fresh(dest)
    model.save_pretrained(dest, max_shard_size="1GB")
    save_tokenizer(wrapped, dest)
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"Made by `{SCRIPT} --bench-dir` with transformers {transformers.__version__}: "
                f"Qwen3-Reranker-0.6B's shape, random weights (std 0.02), float32, a {len(wrapped)}-token "
                f"byte-level BPE trained on the public workload. For speed only: no goldens.\n")
    sizes = folder_size(dest)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n== bench {dest}: {params / 1e6:.1f} M parameters, vocab {len(wrapped)} "
          f"(config {cfg.vocab_size}), {sum(sizes.values())} bytes: {sizes}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default=WORKLOAD)
    parser.add_argument("--bench-dir", nargs="?", const="/tmp/qwen3bench", default=None,
                        help="also write the 0.6B-shaped benchmark folder there (default "
                             "/tmp/qwen3bench when the flag is given bare; ~1.8 GB)")
    parser.add_argument("--bench-only", action="store_true", help="skip the fixtures")
    args = parser.parse_args()

    torch.set_num_threads(2)
    requests = read_workload(args.workload)
    text = training_text(requests) + prompt_words() * PROMPT_WEIGHT
    if not args.bench_only:
        make_fixtures(text, pick_pairs(requests))
    if args.bench_dir:
        make_bench(args.bench_dir, text)


if __name__ == "__main__":
    sys.exit(main())
