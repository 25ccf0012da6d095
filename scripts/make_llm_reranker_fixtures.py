"""Makes tiny mxbai-rerank-v2 (Qwen2) and bge-reranker-v2-gemma (Gemma) folders, with goldens
computed as each family's own package computes them, for tests.

Writes tests/fixtures/models/<name>/ for

    mxbai-rerank-v2      Qwen2ForCausalLM as mixedbread-ai/mxbai-rerank-*-v2 publish it: tied
                         embeddings, biases on Q, K and V, no q/k norms. Scored as mxbai-rerank
                         0.1.6's MxbaiRerankV2 scores: its prompt pieces tokenized one by one, the
                         last position's logit of "1" less that of "0".
    bge-reranker-gemma   GemmaForCausalLM as BAAI/bge-reranker-v2-gemma publishes it: RMS norms
                         scaling by 1 + weight, embeddings scaled by sqrt(hidden), the tanh GELU
                         gate, head_dim 16 (the attention's width 64 is not the hidden size 32),
                         tied embeddings. Scored as FlagEmbedding 1.4.2's FlagLLMReranker scores:
                         BOS by hand, "A: " + query, "\\n", "B: " + passage, "\\n", the prompt, each
                         tokenized alone; the last position's logit of "Yes".

each with tokenizer.json, tokenizer_config.json, goldens.jsonl and a README.md.

The Qwen2 tokenizer is make_qwen3_fixtures.py's byte-level BPE (Qwen2's layout). The Gemma one
is laid out as Gemma's tokenizer.json is (a BPE over whole texts, spaces replaced by "▁" and no
pre-tokenizer, so merges cross word and line boundaries; <pad> <eos> <bos> <unk> first), without
its byte fallback. On it, tokenizing a prompt piece by piece gives other ids than tokenizing the
joined prompt for some pairs (goldens.jsonl marks them "whole_differs"): the test of the pieces.

Cuts. max_length is 128 tokens for both. mxbai's goldens come from the package itself run with
its `max_length` (the span from the query to the document) set to what 128 leaves: the query
keeps at most 3/4 of that span, the document the rest, as crossenc cuts. FlagEmbedding measures
its lengths otherwise (its prompt may run past max_length); crossenc cuts a bge prompt by the
same rule as mxbai's, so the ids of pairs that fit are FlagEmbedding's (checked here) and those
of the few cut pairs follow crossenc's rule.

goldens.jsonl rows: {"query", "document", "instruction" (null: none, or the default prompt),
"logits" (["0", "1"] logits for mxbai, ["Yes"] for bge; transformers float32, each pair alone),
"tokens", "ids", "shared" (the tokens before the document), "whole_differs"}.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/refenv/bin/python scripts/make_llm_reranker_fixtures.py

(torch, transformers >= 5, tokenizers, accelerate, and mxbai-rerank 0.1.6 and FlagEmbedding 1.4.2
installed with --no-deps, plus mxbai's `batched` import.) transformers 5 has no `prepare_for_model`,
which mxbai-rerank 0.1.6 calls: it is given FlagEmbedding's own stand-in for it
(`prepare_for_model_compat`, transformers 4's only_second truncation on ids).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402

import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, models, normalizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer, GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_arch_fixtures import read_workload, training_text  # noqa: E402
from make_qwen3_fixtures import (  # noqa: E402
    CUSTOM_INSTRUCTION, FIXTURES, INIT_RANGE, PERTURB, PROMPT_WEIGHT, TARGET_STD, VOCAB, WORKLOAD,
    bpe_tokenizer, fresh, padded_vocab, pick_pairs, save_tokenizer, wrap_tokenizer)

MAX_LENGTH = 128
SEED = 17
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=512)

MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                "assistant.<|im_end|>\n<|im_start|>user\n")
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. "
              "For each query-document pair, carefully analyze the semantic relationship between them, "
              "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
BGE_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to "
              "the query by providing a prediction of either 'Yes' or 'No'.")
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def flag_embedding_compat():
    """FlagEmbedding's tokenizer_compat module, read from its file: the package's __init__
    imports its training stack."""
    root = os.path.dirname(importlib.util.find_spec("FlagEmbedding").origin)
    spec = importlib.util.spec_from_file_location("tokenizer_compat", os.path.join(root, "utils", "tokenizer_compat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare_for_model_compat


prepare_for_model_compat = flag_embedding_compat()


class LegacyPrepare:
    """A tokenizer with transformers 4's prepare_for_model back, as FlagEmbedding gives it."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def prepare_for_model(self, *args, **kwargs):
        return prepare_for_model_compat(self.inner, *args, **kwargs)


# --------------------------------------------------------------------- pieces

def mxbai_pieces(q, d, instruction):
    query = f"query: {q}" if instruction is None else f"instruction: {instruction}\nquery: {q}"
    return [MXBAI_PREFIX], [query, "\n", f"document: {d}"], ["\n", MXBAI_TASK, MXBAI_SUFFIX]


def bge_pieces(q, d, instruction):
    return ["<bos>"], [f"A: {q}", "\n", f"B: {d}"], ["\n", instruction or BGE_PROMPT]


def crossenc_ids(tok, pieces):
    """crossenc's rule: the span query..document gets what the rest leaves of MAX_LENGTH; the
    query keeps at most 3/4 of it, the document the rest. Returns (ids, shared)."""
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    before, span, after = ([enc(p) for p in part] for part in pieces)
    budget = MAX_LENGTH - sum(map(len, before)) - sum(map(len, after))
    query = span[0][:budget * 3 // 4]
    document = span[2][:budget - len(query) - len(span[1])]
    head = sum(before, []) + query + span[1]
    return head + document + sum(after, []), len(head)


def whole_ids(tok, pieces):
    return tok("".join(sum(pieces, [])), add_special_tokens=False)["input_ids"]


def flag_embedding_ids(tok, q, d, instruction, max_length=10_000):
    """FlagLLMReranker.compute_score_single_gpu's inputs (FlagEmbedding 1.4.2), for a pair that
    fits: its own query and passage cuts, prepare_for_model, then sep + prompt."""
    prompt = tok(instruction or BGE_PROMPT, add_special_tokens=False)["input_ids"]
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    query = tok(f"A: {q}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
    passage = tok(f"B: {d}", add_special_tokens=False, max_length=max_length, truncation=True)
    item = prepare_for_model_compat(tok, [tok.bos_token_id] + query["input_ids"], sep + passage["input_ids"],
                                 truncation="only_second", max_length=max_length + len(sep) + len(prompt),
                                 padding=False, return_attention_mask=False, return_token_type_ids=False,
                                 add_special_tokens=False)
    return item["input_ids"] + sep + prompt


# ------------------------------------------------------------------ tokenizers

def gemma_tokenizer(text):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=GEMMA_SPECIALS, show_progress=False,
                                  limit_alphabet=400)
    tok.train_from_iterator(text, trainer)
    for i, t in enumerate(GEMMA_SPECIALS):
        assert tok.token_to_id(t) == i, t
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIALS])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                      pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                      model_max_length=8192, clean_up_tokenization_spaces=False)
    return wrapped


# ---------------------------------------------------------------------- models

def perturb(model):
    """Norm gains and (Qwen2's) biases moved off their initial values, so that a pass that
    ignores them, or Gemma's 1 + weight, misses the goldens by far."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * PERTURB)


def calibrate(model, rows, all_ids, rounds=4):
    """The answer rows of the tied embeddings set so that the raw scores over the goldens
    centre on 0 with std TARGET_STD, as a trained reranker's do (see make_qwen3_fixtures.py)."""
    emb = model.model.embed_tokens.weight
    with torch.inference_mode():
        for _ in range(rounds):
            last = torch.cat([model.model(input_ids=torch.tensor([x])).last_hidden_state[:, -1]
                              for x in all_ids])
            mean = last.mean(dim=0)
            if len(rows) == 2:
                no, yes = emb[rows[0]].clone(), emb[rows[1]].clone()
                mid, diff = (yes + no) / 2, yes - no
                diff -= (mean @ diff) / (mean @ mean) * mean
                diff *= TARGET_STD / (last @ diff).std()
                emb[rows[1]], emb[rows[0]] = mid + diff / 2, mid - diff / 2
            else:
                yes = emb[rows[0]].clone()
                yes -= (mean @ yes) / (mean @ mean) * mean
                yes *= TARGET_STD / (last @ yes).std()
                emb[rows[0]] = yes


def last_logits(model, ids, rows):
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return out[rows].float().tolist()


def write(dest, rows):
    with open(os.path.join(dest, "goldens.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- makers

def make_mxbai(text, triples):
    dest = os.path.join(FIXTURES, "mxbai-rerank-v2")
    words = [MXBAI_PREFIX, MXBAI_TASK, MXBAI_SUFFIX, "query: ", "document: ", "instruction: "]
    tok, _ = bpe_tokenizer(text + words * PROMPT_WEIGHT, VOCAB)
    wrapped = wrap_tokenizer(tok)
    cfg = Qwen2Config(vocab_size=padded_vocab(len(wrapped)), **TINY, hidden_act="silu", rms_norm_eps=1e-6,
                      rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                      initializer_range=INIT_RANGE, pad_token_id=wrapped.pad_token_id,
                      bos_token_id=wrapped.pad_token_id, eos_token_id=wrapped.eos_token_id)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).float().eval()
    perturb(model)
    rows = [wrapped("0", add_special_tokens=False)["input_ids"][0], wrapped("1", add_special_tokens=False)["input_ids"][0]]
    ids = [crossenc_ids(wrapped, mxbai_pieces(*t))[0] for t in triples]
    calibrate(model, rows, ids)
    fresh(dest)
    model.save_pretrained(dest)
    save_tokenizer(wrapped, dest)

    # The package itself, on the saved folder: its ids and its scores.
    from mxbai_rerank.mxbai_rerank_v2 import MxbaiRerankV2
    span = MAX_LENGTH - sum(len(wrapped(p, add_special_tokens=False)["input_ids"])
                            for p in [MXBAI_PREFIX, "\n", MXBAI_TASK, MXBAI_SUFFIX])
    package = MxbaiRerankV2(dest, device="cpu", torch_dtype=torch.float32, max_length=span)
    package.tokenizer = LegacyPrepare(package.tokenizer)
    out, worst, differs = [], 0.0, 0
    for q, d, i in triples:
        ids, shared = crossenc_ids(wrapped, mxbai_pieces(q, d, i))
        enc = package.prepare_inputs([q], [d], instruction=i)
        theirs = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
        assert theirs == ids, f"mxbai's ids differ for {q[:30]!r}/{d[:30]!r}"
        logits = last_logits(model, ids, rows)
        score = package.predict([q], [d], instruction=i).item()
        worst = max(worst, abs(score - (logits[1] - logits[0])))
        whole = whole_ids(wrapped, [[MXBAI_PREFIX], mxbai_pieces(q, d, i)[1], mxbai_pieces(q, d, i)[2]])
        differs += whole[:len(ids)] != ids and len(whole) <= MAX_LENGTH
        out.append(dict(query=q, document=d, instruction=i, logits=logits, tokens=len(ids), ids=ids,
                        shared=shared, whole_differs=whole != ids))
    assert worst < 1e-4, f"the package's scores differ from the model's by {worst}"
    write(dest, out)
    readme(dest, "mxbai-rerank-v2", cfg, out, worst, "the package's predict() (left-padded to a multiple of 8)")
    return out


def make_gemma(text, triples):
    dest = os.path.join(FIXTURES, "bge-reranker-gemma")
    words = ["A: ", "B: ", BGE_PROMPT, "Yes"]
    wrapped = gemma_tokenizer(text + words * PROMPT_WEIGHT)
    cfg = GemmaConfig(vocab_size=padded_vocab(len(wrapped)), **TINY, head_dim=16, hidden_act="gelu_pytorch_tanh",
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                      initializer_range=INIT_RANGE, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(SEED)
    model = GemmaForCausalLM(cfg).float().eval()
    perturb(model)
    yes = wrapped("Yes", add_special_tokens=False)["input_ids"]
    assert len(yes) == 1, yes
    ids = [crossenc_ids(wrapped, bge_pieces(*t))[0] for t in triples]
    calibrate(model, yes, ids)
    fresh(dest)
    model.save_pretrained(dest)
    wrapped.save_pretrained(dest)
    tok = AutoTokenizer.from_pretrained(dest)
    out, checked = [], 0
    for q, d, i in triples:
        ids, shared = crossenc_ids(tok, bge_pieces(q, d, i))
        theirs = flag_embedding_ids(tok, q, d, i)
        if len(theirs) <= MAX_LENGTH:
            assert theirs == ids, f"FlagEmbedding's ids differ for {q[:30]!r}/{d[:30]!r}"
            checked += 1
        whole = whole_ids(tok, bge_pieces(q, d, i))
        out.append(dict(query=q, document=d, instruction=i, logits=last_logits(model, ids, yes),
                        tokens=len(ids), ids=ids, shared=shared, whole_differs=whole != ids))
    assert checked >= len(triples) // 2, checked
    assert any(r["whole_differs"] for r in out), "no pair tells pieces from the whole prompt"
    write(dest, out)
    readme(dest, "bge-reranker-gemma", cfg, out, None, f"FlagEmbedding's inputs ({checked} pairs that fit)")
    return out


def readme(dest, name, cfg, rows, worst, how):
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"# {name} (test fixture)\n\nA seeded random {cfg.architectures[0] if cfg.architectures else cfg.model_type} "
                f"(hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} query and "
                f"{cfg.num_key_value_heads} key/value heads), float32, made by scripts/make_llm_reranker_fixtures.py. "
                f"Template `{name}`. {len(rows)} goldens, ids checked against {how}; "
                f"{sum(r['whole_differs'] for r in rows)} of them tokenize otherwise as one text."
                + (f" The package's scores agree with the logits within {worst:.1e}." if worst is not None else "")
                + " Not a reranker: its scores mean nothing.\n")


def main():
    requests = read_workload(WORKLOAD)
    text = training_text(requests)
    triples = pick_pairs(requests)
    triples += [(q, d, CUSTOM_INSTRUCTION) for q, d, _ in triples[:2]]
    # mxbai reads no instruction unless given one: the picked pairs' None stays none.
    m = make_mxbai(text, triples)
    g = make_gemma(text, triples)
    for name, rows in [("mxbai-rerank-v2", m), ("bge-reranker-gemma", g)]:
        print(name, len(rows), "goldens, at the limit:", sum(r["tokens"] == MAX_LENGTH for r in rows),
              "whole differs:", sum(r["whole_differs"] for r in rows))


if __name__ == "__main__":
    main()
