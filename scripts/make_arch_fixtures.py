"""Makes tiny cross-encoder folders of four architectures, with reference logits, for tests.

Writes tests/fixtures/models/<name>/ for

    xlm-roberta      XLMRobertaForSequenceClassification, 1 label, Unigram (sentencepiece-style)
                     tokenizer with the nmt_nfkc Precompiled normalizer, as XLM-R's own has
    roberta          RobertaForSequenceClassification, 2 labels (irrelevant, relevant),
                     byte-level BPE tokenizer, RobertaProcessing
    camembert        CamembertForSequenceClassification, 1 label, Unigram tokenizer without a
                     normalizer, and sentence-transformers' "identity activation" config key
    bert-two-labels  BertForSequenceClassification, 2 labels, lowercasing WordPiece tokenizer,
                     token type ids 0/1
    distilbert       DistilBertForSequenceClassification, 1 label, the same kind of tokenizer
                     (its tokenizer passes the model no token types)
    deberta-v2       DebertaV2ForSequenceClassification (DeBERTa-v3's shape), 1 label, Unigram
                     tokenizer with [CLS] A [SEP] B [SEP], 16 relative position buckets
    modernbert       ModernBertForSequenceClassification, 1 label, byte-level BPE with
                     [CLS] A [SEP] B [SEP], 4 layers alternating global and local attention
                     (a 16-token window), mean pooling
    modernbert-cls   the same model and tokenizer pooled on the first token instead
                     (classifier_pooling "cls"), whose last layer the packed pass runs
                     for the first tokens alone

each holding what a user's folder holds (config.json, model.safetensors in float32,
tokenizer.json, tokenizer_config.json) plus goldens.jsonl and a README.md. The models are
small (hidden 32, 2 layers, 4 heads, ~800-token vocabularies trained here on the public
workload's text) so that the folders stay well under a megabyte and the tests run fast,
but the structure is the real one, so a loader or a forward pass that gets an
architecture wrong fails against the goldens.

goldens.jsonl rows: {"query", "document", "logits" (every label, transformers float32),
"tokens" (the pair's length after truncation)}, computed the way sentence-transformers'
CrossEncoder calls the tokenizer: padded batches of pairs, truncation="longest_first",
max_length=128, every tensor the tokenizer returns passed to the model (so no
token_type_ids for the RoBERTa family). The script checks that scoring each pair alone
gives the same logits (padding must not matter) and that the bare `tokenizers` library,
reading tokenizer.json as the Rust server does, produces the very ids transformers used.

It also writes two MiniLM-sized folders (hidden 384, 6 layers, 12 heads, 514 positions,
vocabularies trained towards 8000 tokens: the workload's text yields 4586 Unigram pieces
and 6945 BPE tokens) of the xlm-roberta and roberta kinds to /tmp/archbench (see
--bench-dir), without goldens, for speed benchmarks only.

Deterministic, byte for byte: fixed training text (the workload file, in file order),
torch.manual_seed per model, trained vocabularies put in a canonical order (the trainers'
hash-map order varies between runs). Run by hand in the reference venv:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/refenv/bin/python scripts/make_arch_fixtures.py

(torch, transformers >= 5, tokenizers, sentencepiece: sentencepiece only supplies the
nmt_nfkc normalization table XLM-R's tokenizer.json carries.)
"""
import argparse
import io
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one training thread: fewer orders to canonicalize
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import (  # noqa: E402
    Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers)
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    CamembertConfig,
    CamembertForSequenceClassification,
    CamembertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaTokenizerFast,
)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WORKLOAD = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "workload-public.jsonl"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
SCRIPT = "scripts/make_arch_fixtures.py"

MAX_LENGTH = 128  # pair limit; RoBERTa-family positions are offset by pad_token_id + 1 = 2
BATCH = 16
PER_QUERY = 12  # workload documents of each of the first queries in the goldens
TARGET_STD = 2.0  # spread of the logits over the goldens, as a trained reranker's
INIT_RANGE = 0.35  # not the usual 0.02: attention must pick tokens for inputs to differ
PERTURB = 0.1  # LayerNorm gains/biases and Linear biases moved off their 1/0 defaults

SENTENCEPIECE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R order, ids 0..4
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

EDGE_CASES = [
    ("Qu'est-ce que la crème brûlée ? 東京 🍣", "La crème brûlée est un dessert français. 東京の寿司 🍣 est délicieux."),
    ("東京の天気", "東京は今日、晴れのち曇り。最高気温は二十度です。"),
    ("best pizza 🍕 near me", "🍕🍕 Mario's serves wood-fired pizza 🔥 until midnight 🌙"),
    ("Ünïcödé nörmälizätiön", "Ünïcödé text with dïäcritics, ligatures ﬁ ﬂ and full-width ＡＢＣ."),
    ("What does   this    spacing do?", "  Leading,\ttabs\tand\n newlines  and trailing   "),
    ("what is a cross-encoder", ""),
    ("x", "A list of FrameSummary objects, representing a stack of frames."),
    ("x", "y"),
]


# ---------------------------------------------------------------------------- text

def read_workload(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def training_text(requests):
    """Every query and document of the workload, in file order."""
    return [r["query"] for r in requests] + [d for r in requests for d in r["documents"]]


def pick_pairs(requests):
    """About 60 (query, document) pairs: workload pairs of every length, pairs cut at 128
    tokens, a query that is longer than the limit on its own, and hand-written edge cases."""
    pairs = []
    for r in requests[:5]:
        docs = sorted(r["documents"], key=len)
        if len(r["query"]) > 200:  # a query of ~100 tokens: cut too, with its longer documents
            pairs += [(r["query"], docs[0]), (r["query"], docs[-1])]
        else:  # twelve documents, spread from the shortest to the longest
            pairs += [(r["query"], docs[round(i * (len(docs) - 1) / (PER_QUERY - 1))])
                      for i in range(PER_QUERY)]
    for i, r in enumerate(requests[5:9]):  # documents far past the limit
        long_doc = " ".join(sorted(r["documents"], key=len, reverse=True)[:4 + i])
        pairs.append((r["query"], long_doc))
    long_query = " ".join(r["query"] for r in requests[9:25])
    pairs.append((long_query, requests[9]["documents"][0]))  # the query alone is past 128
    pairs.append((long_query, " ".join(requests[10]["documents"][:8])))  # both are cut
    return pairs + EDGE_CASES


# ----------------------------------------------------------------------- tokenizers

def nmt_nfkc_charsmap(text):
    """sentencepiece's compiled nmt_nfkc table, the Precompiled normalizer of XLM-R's
    tokenizer.json. sentencepiece only hands it out inside a trained model, so a throwaway
    model is trained on a little text and the table taken from it."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text[:200]), model_writer=blob, vocab_size=100,
                                   normalization_rule_name="nmt_nfkc", minloglevel=2, num_threads=1)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(blob.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def roberta_template():
    """XLM-R's <s> A </s> / <s> A </s> </s> B </s>, all type ids 0."""
    return processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])


def bert_template(second_type=1):
    """BERT's [CLS] A [SEP] B [SEP]; the second text's type id is `second_type`."""
    t = second_type
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair=f"[CLS]:0 $A:0 [SEP]:0 $B:{t} [SEP]:{t}",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])


def unigram_tokenizer(text, vocab_size, charsmap=None, specials=SENTENCEPIECE_SPECIALS,
                      template=roberta_template):
    """Sentencepiece-style Unigram, laid out as XLM-R's tokenizer.json: optional Precompiled
    normalizer (+ runs of spaces folded), WhitespaceSplit then Metaspace; XLM-R's specials
    and template by default (DeBERTa's kind: BERT's)."""
    tok = Tokenizer(models.Unigram())
    if charsmap is not None:
        tok.normalizer = normalizers.Sequence([
            normalizers.Precompiled(charsmap),
            normalizers.Replace(Regex(" {2,}"), " "),
        ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(text, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        unk_token=next(t for t in specials if "unk" in t.lower()), show_progress=False))
    tok.post_processor = template()
    return tok


def bpe_tokenizer(text, vocab_size, specials=SENTENCEPIECE_SPECIALS, template=None):
    """Byte-level BPE, no normalizer, ByteLevel without a prefix space: RoBERTa's specials
    and RobertaProcessing <s> A </s></s> B </s> by default (ModernBERT's kind: BERT's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = template() if template else processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return tok


def wordpiece_tokenizer(text, vocab_size):
    """BERT uncased: BertNormalizer (lowercase, accents stripped), BertPreTokenizer,
    WordPiece, [CLS] A [SEP] B [SEP] with type ids 0 then 1."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(text, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False))
    tok.post_processor = bert_template()
    return tok


def canonical(tok, n_specials):
    """The trainers iterate Rust hash maps, so two runs can order the same vocabulary
    differently (WordPiece's ## pieces, Unigram's fallback characters, Unigram scores that
    differ in the 15th digit). The ids are put in an order that depends on the pieces
    only: specials first, then Unigram pieces by score rounded to 9 decimals, WordPiece
    pieces single characters first, each group by string. Byte-level BPE needs none: its
    alphabet is fixed, so its runs already agree."""
    spec = json.loads(tok.to_str())
    model = spec["model"]
    if model["type"] == "Unigram":
        head, rest = model["vocab"][:n_specials], model["vocab"][n_specials:]
        rest = sorted(([p, round(s, 9)] for p, s in rest), key=lambda ps: (-ps[1], ps[0]))
        # The characters no piece covers come last, with made-up scores 1e-4 apart handed
        # out in hash order: the same scores go to the same characters taken in order.
        tail = len(rest)
        while tail > 0 and len(rest[tail - 1][0]) == 1:
            tail -= 1
        chars = sorted(p for p, _ in rest[tail:])
        rest[tail:] = [[c, score] for c, (_, score) in zip(chars, rest[tail:])]
        model["vocab"] = head + rest
    elif model["type"] == "WordPiece":
        vocab = model["vocab"]
        order = sorted(vocab, key=lambda t: (0, vocab[t], "") if vocab[t] < n_specials
                       else (1, len(t.removeprefix("##")) > 1, t))
        model["vocab"] = {t: i for i, t in enumerate(order)}
    else:
        return tok
    return Tokenizer.from_str(json.dumps(spec))


def check_specials(tok, specials):
    for i, name in enumerate(specials):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name), i)


# --------------------------------------------------------------------------- kinds

def roberta_family(config_cls, model_cls, tok_cls, **extra):
    return dict(config_cls=config_cls, model_cls=model_cls, tok_cls=tok_cls,
                specials=SENTENCEPIECE_SPECIALS,
                config=dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                            max_position_embeddings=MAX_LENGTH + 2, layer_norm_eps=1e-5, **extra))


KINDS = {
    "xlm-roberta": dict(
        roberta_family(XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast),
        tokenizer="unigram-nfkc", num_labels=1, seed=1),
    "roberta": dict(
        roberta_family(RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast),
        tokenizer="bpe", num_labels=2, id2label={0: "irrelevant", 1: "relevant"}, seed=2),
    "camembert": dict(
        roberta_family(CamembertConfig, CamembertForSequenceClassification, CamembertTokenizerFast,
                       sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"),
        # CamembertTokenizer would otherwise add <s>NOTUSED, </s>NOTUSED, <unk>NOTUSED past the vocab
        tok_kwargs=dict(additional_special_tokens=[], extra_special_tokens=[]),
        tokenizer="unigram", num_labels=1, seed=3),
    "bert-two-labels": dict(
        config_cls=BertConfig, model_cls=BertForSequenceClassification, tok_cls=BertTokenizerFast,
        specials=BERT_SPECIALS,
        config=dict(pad_token_id=0, type_vocab_size=2, max_position_embeddings=MAX_LENGTH,
                    layer_norm_eps=1e-12),
        tok_kwargs=dict(do_lower_case=True),
        tokenizer="wordpiece", num_labels=2, seed=4),
    # DistilBertConfig's own names, as a real DistilBERT config.json has them (the BERT
    # names would be saved beside them as extra attributes).
    "distilbert": dict(
        config_cls=DistilBertConfig, model_cls=DistilBertForSequenceClassification,
        tok_cls=DistilBertTokenizerFast, specials=BERT_SPECIALS,
        names=dict(hidden_size="dim", num_hidden_layers="n_layers", num_attention_heads="n_heads",
                   intermediate_size="hidden_dim", hidden_act="activation"),
        config=dict(pad_token_id=0, max_position_embeddings=MAX_LENGTH),
        tok_kwargs=dict(do_lower_case=True),
        tokenizer="wordpiece", num_labels=1, seed=5),
    # Four layers, a global one every two (global, local, global, local), a local window
    # of 16 tokens (8 each side), shorter than most test pairs, and mean pooling.
    "modernbert": dict(
        config_cls=ModernBertConfig, model_cls=ModernBertForSequenceClassification,
        tok_cls=PreTrainedTokenizerFast, specials=BERT_SPECIALS,
        names=dict(hidden_act="hidden_activation"),
        sizes=dict(num_hidden_layers=4),
        config=dict(pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=None,
                    eos_token_id=None, max_position_embeddings=MAX_LENGTH, local_attention=16,
                    global_attn_every_n_layers=2, classifier_pooling="mean"),
        tok_kwargs=dict(model_input_names=["input_ids", "attention_mask"]),
        tokenizer="bpe-cls", num_labels=1, seed=6),
    # DeBERTa-v3's shape (as mxbai-rerank's): relative attention only (no position table,
    # no token types), c2p and p2c sharing the attention's key and query projections,
    # log position buckets (16: fewer than the test pairs' lengths), the normed relative
    # embeddings, the context pooler.
    "deberta-v2": dict(
        config_cls=DebertaV2Config, model_cls=DebertaV2ForSequenceClassification,
        tok_cls=PreTrainedTokenizerFast, specials=BERT_SPECIALS,
        config=dict(pad_token_id=0, max_position_embeddings=MAX_LENGTH, type_vocab_size=0,
                    relative_attention=True, position_buckets=16, max_relative_positions=-1,
                    pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                    position_biased_input=False, pooler_hidden_size=TINY["hidden_size"],
                    pooler_hidden_act="gelu", pooler_dropout=0.0, layer_norm_eps=1e-7),
        tok_kwargs=dict(model_input_names=["input_ids", "attention_mask"]),
        tokenizer="unigram-cls", num_labels=1, seed=7),
}


def train_tokenizer(kind, text, vocab_size, charsmap):
    name = kind["tokenizer"]
    if name == "unigram-nfkc":
        tok = unigram_tokenizer(text, vocab_size, charsmap)
    elif name == "unigram":
        tok = unigram_tokenizer(text, vocab_size)
    elif name == "bpe":
        tok = bpe_tokenizer(text, vocab_size)
    elif name == "bpe-cls":
        tok = bpe_tokenizer(text, vocab_size, BERT_SPECIALS, lambda: bert_template(second_type=0))
    elif name == "unigram-cls":
        tok = unigram_tokenizer(text, vocab_size, None, BERT_SPECIALS, bert_template)
    else:
        tok = wordpiece_tokenizer(text, vocab_size)
    tok = canonical(tok, len(kind["specials"]))
    check_specials(tok, kind["specials"])
    return tok


def wrap_tokenizer(kind, tok):
    """The transformers tokenizer a user's folder is saved from (tokenizer_config.json)."""
    s = kind["specials"]
    if kind["specials"] is BERT_SPECIALS:
        names = dict(pad_token=s[0], unk_token=s[1], cls_token=s[2], sep_token=s[3], mask_token=s[4])
    else:
        names = dict(bos_token=s[0], pad_token=s[1], eos_token=s[2], unk_token=s[3], mask_token=s[4],
                     cls_token=s[0], sep_token=s[2])
    wrapped = kind["tok_cls"](tokenizer_object=tok, model_max_length=MAX_LENGTH, **names,
                              **kind.get("tok_kwargs", {}))
    assert len(wrapped) == tok.get_vocab_size(), (len(wrapped), tok.get_vocab_size())
    return wrapped


# -------------------------------------------------------------------------- models

def build_model(kind, vocab_size, sizes, max_positions=None):
    """A seeded random model of the real class: weights drawn at INIT_RANGE, then every
    LayerNorm gain/bias and Linear bias moved off 1/0 so that a loader that drops one
    shows in the logits."""
    config = dict(kind["config"])
    if max_positions is not None:
        config["max_position_embeddings"] = max_positions
    labels = kind.get("id2label") or {i: f"LABEL_{i}" for i in range(kind["num_labels"])}
    names = kind.get("names", {})
    own = {names.get(k, k): v for k, v in dict(sizes, **kind.get("sizes", {}), hidden_act="gelu").items()}
    cfg = kind["config_cls"](
        vocab_size=vocab_size, initializer_range=INIT_RANGE,
        num_labels=kind["num_labels"], id2label=labels, label2id={v: k for k, v in labels.items()},
        architectures=[kind["model_cls"].__name__], **own, **config)
    torch.manual_seed(kind["seed"])
    model = kind["model_cls"](cfg).float().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(torch.randn_like(module.weight) * PERTURB)
                if module.bias is not None:
                    module.bias.copy_(torch.randn_like(module.bias) * PERTURB)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn_like(module.bias) * PERTURB)
    return model


def head_output_layer(model):
    head = model.classifier
    return head.out_proj if hasattr(head, "out_proj") else head


def score(model, tok, pairs, batch=BATCH):
    """CrossEncoder-style: padded batches, longest_first truncation, all tensors passed."""
    logits, tokens, ids = [], [], []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            chunk = pairs[i:i + batch]
            enc = tok([q for q, _ in chunk], [d for _, d in chunk], padding=True,
                      truncation="longest_first", max_length=MAX_LENGTH, return_tensors="pt")
            logits += model(**enc).logits.tolist()
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            tokens += lengths
            ids += [row[:n] for row, n in zip(enc["input_ids"].tolist(), lengths)]
    return logits, tokens, ids


def calibrate_head(model, tok, pairs):
    """Scales each label's output row so the logits over the goldens have std TARGET_STD,
    and sets its bias so they centre on 0: a trained reranker's spread, from a random
    encoder's features."""
    layer = head_output_layer(model)
    logits = torch.tensor(score(model, tok, pairs)[0])
    std, mean = logits.std(dim=0), logits.mean(dim=0)
    factor = TARGET_STD / std
    with torch.no_grad():
        layer.weight.mul_(factor[:, None])
        layer.bias.copy_((layer.bias - mean) * factor)
    return std.tolist(), factor.tolist()


def save_folder(dest, model, wrapped):
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    model.save_pretrained(dest)
    wrapped.save_pretrained(dest)
    assert os.path.isfile(os.path.join(dest, "model.safetensors")), os.listdir(dest)
    write_labels(dest, model.config)


def write_labels(dest, config):
    """transformers 5 leaves id2label/label2id out of config.json when they are the
    defaults (LABEL_0, LABEL_1 for two labels); 4.x wrote them, and a user's folder has
    them, so they are put back."""
    path = os.path.join(dest, "config.json")
    cfg = json.load(open(path))
    if "id2label" not in cfg:
        cfg["id2label"] = {str(i): label for i, label in config.id2label.items()}
        cfg["label2id"] = {label: i for i, label in config.id2label.items()}
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")


# ------------------------------------------------------------------------- goldens

def check_config(dest, kind):
    cfg = json.load(open(os.path.join(dest, "config.json")))
    assert cfg["architectures"] == [kind["model_cls"].__name__], cfg["architectures"]
    assert cfg["pad_token_id"] == kind["config"]["pad_token_id"]
    assert len(cfg["id2label"]) == kind["num_labels"]
    tok_json = json.load(open(os.path.join(dest, "tokenizer.json")))
    assert cfg["vocab_size"] == Tokenizer.from_file(os.path.join(dest, "tokenizer.json")).get_vocab_size()
    return cfg, tok_json


def write_goldens(dest, pairs):
    """Reloads the folder as a user would, scores the pairs in batches and one by one, checks
    the bare tokenizer.json gives the same ids, and writes goldens.jsonl."""
    tok = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForSequenceClassification.from_pretrained(dest).float().eval()
    assert len(tok) == model.config.vocab_size, (len(tok), model.config.vocab_size)  # none added on load
    logits, tokens, ids = score(model, tok, pairs)
    alone, _, _ = score(model, tok, pairs, batch=1)
    worst = max(abs(a - b) for x, y in zip(logits, alone) for a, b in zip(x, y))
    assert worst <= 1e-5, f"padding changes the logits by {worst}"
    exact, _, _ = score(model.double(), tok, pairs)  # the float32 noise floor, for tolerances
    noise = max(abs(a - b) for x, y in zip(logits, exact) for a, b in zip(x, y))

    raw = Tokenizer.from_file(os.path.join(dest, "tokenizer.json"))
    raw.enable_truncation(MAX_LENGTH, strategy="longest_first")
    raw.no_padding()
    for (q, d), expected in zip(pairs, ids):
        got = raw.encode(q, d).ids
        assert got == expected, f"tokenizer.json and transformers disagree on {q[:40]!r}/{d[:40]!r}"

    with open(os.path.join(dest, "goldens.jsonl"), "w", encoding="utf-8") as f:
        for (q, d), row, n in zip(pairs, logits, tokens):
            f.write(json.dumps({"query": q, "document": d, "logits": row, "tokens": int(n)},
                               ensure_ascii=False) + "\n")
    return torch.tensor(logits), tokens, worst, noise


def write_readme(dest, name, kind, vocab_size):
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"Made by `{SCRIPT}` (do not edit by hand): a seeded random "
                f"{kind['model_cls'].__name__} ({kind['num_labels']} label(s), hidden 32, 2 layers, "
                f"{kind['tokenizer']} tokenizer of {vocab_size} tokens trained on the public workload) "
                f"and goldens.jsonl, its transformers float32 logits at max_length {MAX_LENGTH}.\n")


def folder_size(dest):
    return {f: os.path.getsize(os.path.join(dest, f)) for f in sorted(os.listdir(dest))}


def make_fixture(name, text, pairs, charsmap, vocab_size=800):
    kind = KINDS[name]
    dest = os.path.join(FIXTURES, name)
    tok = train_tokenizer(kind, text, vocab_size, charsmap)
    wrapped = wrap_tokenizer(kind, tok)
    model = build_model(kind, tok.get_vocab_size(), TINY)
    raw_std, factor = calibrate_head(model, wrapped, pairs)
    save_folder(dest, model, wrapped)
    cfg, tok_json = check_config(dest, kind)
    logits, tokens, worst, noise = write_goldens(dest, pairs)
    write_readme(dest, name, kind, cfg["vocab_size"])
    sizes = folder_size(dest)
    print(f"\n== {name}: {kind['model_cls'].__name__}, vocab {cfg['vocab_size']}, {len(pairs)} goldens, "
          f"{sum(t >= MAX_LENGTH for t in tokens)} cut at {MAX_LENGTH}, tokens {min(tokens)}..{max(tokens)}")
    print(f"   head: raw logit std {[round(s, 4) for s in raw_std]} scaled x{[round(f, 2) for f in factor]}")
    print(f"   logits: min {logits.min(dim=0).values.tolist()} max {logits.max(dim=0).values.tolist()} "
          f"std {logits.std(dim=0).tolist()}")
    print(f"   std over the first query's documents {logits[:PER_QUERY].std(dim=0).tolist()}; "
          f"batch vs alone max diff {worst:.2e}; float32 vs float64 max diff {noise:.2e}")
    print(f"   files: {sizes} = {sum(sizes.values())} bytes")
    print(f"   post_processor: {json.dumps(tok_json['post_processor'])}")


# Fixtures that are another's weights and tokenizer with some config keys changed: git
# stores the shared files once.
TWINS = {"modernbert-cls": ("modernbert", {"classifier_pooling": "cls"})}


def make_twin(name, pairs):
    source, changes = TWINS[name]
    src, dest = os.path.join(FIXTURES, source), os.path.join(FIXTURES, name)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    path = os.path.join(dest, "config.json")
    cfg = json.load(open(path))
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    logits, tokens, worst, noise = write_goldens(dest, pairs)
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(f"Made by `{SCRIPT}` (do not edit by hand): {source}'s weights and tokenizer "
                f"with {json.dumps(changes)}, and goldens.jsonl, its transformers float32 "
                f"logits at max_length {MAX_LENGTH}.\n")
    print(f"\n== {name}: {source} with {changes}; logits std {logits.std(dim=0).tolist()}; "
          f"batch vs alone max diff {worst:.2e}; float32 vs float64 max diff {noise:.2e}")


def make_bench(name, dest, text, pairs, charsmap, vocab_size=8000):
    """MiniLM-sized twin of a fixture, for speed benchmarks: no goldens."""
    kind = KINDS[name]
    tok = train_tokenizer(kind, text, vocab_size, charsmap)
    wrapped = wrap_tokenizer(kind, tok)
    wrapped.model_max_length = 512
    model = build_model(kind, tok.get_vocab_size(), MINILM, max_positions=514)
    calibrate_head(model, wrapped, pairs)
    save_folder(dest, model, wrapped)
    check_config(dest, kind)
    sizes = folder_size(dest)
    print(f"\n== bench {dest}: vocab {tok.get_vocab_size()}, {sum(sizes.values())} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default=WORKLOAD)
    parser.add_argument("--bench-dir", default="/tmp/archbench",
                        help="where the MiniLM-sized benchmark folders go ('' to skip them)")
    parser.add_argument("--only", choices=sorted(KINDS) + sorted(TWINS), action="append",
                        help="make only these fixtures (the others stay as they are)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    requests = read_workload(args.workload)
    text = training_text(requests)
    pairs = pick_pairs(requests)
    charsmap = nmt_nfkc_charsmap(text)
    for name in args.only or KINDS:
        if name in KINDS:
            make_fixture(name, text, pairs, charsmap)
    for name in TWINS:
        if not args.only or name in args.only:
            make_twin(name, pairs)
    if args.bench_dir:
        make_bench("xlm-roberta", os.path.join(args.bench_dir, "xlm-roberta-minilm"), text, pairs, charsmap)
        make_bench("roberta", os.path.join(args.bench_dir, "roberta-minilm"), text, pairs, charsmap)


if __name__ == "__main__":
    sys.exit(main())
