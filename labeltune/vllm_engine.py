"""vLLM as a labelling engine: the three decode modes of labeltune.decode.predict, served by vLLM.

    from labeltune.vllm_engine import VllmEngine
    with VllmEngine("runs/demo-merged16") as engine:     # start-up: ~25-60 s on CPU
        predictions = engine.predict(texts, "score")      # list[labeltune.answers.Answer]

The run is a merged16 export (its model/ is served as is), or a run with an adapter/ that vLLM's LoRA
support can serve (base + LoRARequest). An adapter that trains whole modules (modules_to_save, e.g. the
tiny preset's lm_head) is refused before vLLM starts: vLLM serves only LoRA weights for a generative
model, and a refused adapter would kill the engine.

Each prediction means what the hf engine's does, on the same prompt token ids (the run's template and
tokenizer through its Prompter, passed to vLLM as token prompts; the truncation flag kept):

- ``generate``: free greedy decoding, stopping at the tokenizer's EOS only (no generation_config is read),
  then the strict parser; ``no_eos`` when the token limit stopped it.
- ``constrained``: vLLM structured outputs with the task's answers as ``choice``: only those strings can
  come out, then EOS, so 0 malformed by construction. The hf engine constrains token by token (the
  answers' own tokenisation); vLLM's grammar works on characters, so a model may spell an answer with
  other tokens (the same text; the token limit allows one token per byte). Label probabilities as in
  the hf engine where every label is one token after ``label : `` and the answer took that path.
- ``score``: no generation. The hf engine reads the logits at the nodes of the answer trie from one KV
  cache; here each node is one vLLM request (prompt + the answer's tokens up to the node, one token,
  ``logprob_token_ids`` = the tokens the trie allows there), vLLM's prefix cache sharing the prompt's
  blocks between them. Label: log p summed over its tokens, each renormalised over the node's allowed
  tokens, softmax over labels, the decision after temperature and label_bias, as the hf engine
  (labeltune.answers does that maths for both). Score: the chosen label's exact distribution over its
  allowed scores (one node for a tokenizer that writes 0..100 as one token, eleven for one digit per
  token) and its greedy path, then answers.estimate_score. The same numbers as the hf engine up to float
  rounding; only ties broken by rounding can differ.

vLLM is imported here only (never when labeltune is imported). On CPU, vLLM starts its engine in a
spawned process: a script that builds a VllmEngine needs ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from labeltune.answers import (
    Answer,
    DecodeSettings,
    answer_texts,
    branching_nodes,
    check_mode,
    choose_label,
    first_token_label_probs,
    generated_answer,
    has_score,
    label_distribution,
    label_nodes,
    log_softmax,
    one_token_labels,
    score_distribution,
    score_root,
    scored_answer,
)
from labeltune.features import Prompter
from labeltune.models import (
    TORCH_DTYPES,
    check_dtype,
    cuda_available,
    ensure_pad_token,
    gpu_capability,
    gpu_memory_gib,
    select_precision,
)
from labeltune.run import (
    ADAPTER,
    ADAPTER_CONFIG,
    MERGED,
    MissingRunFile,
    Run,
    RunInfo,
    base_path,
    full_id_path,
    open_run,
)

INSTALL_HINT = "the vllm engine needs vLLM: pip install 'labeltune[vllm]' (GPU) or make env-vllm (CPU)"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
MAX_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS: most token ids one request may ask logprobs for


class VllmUnavailable(ValueError):
    """vLLM is not installed here, or cannot be imported as installed."""


def import_vllm():
    """The vllm module, or VllmUnavailable in one line saying what to install."""
    try:
        import vllm
        from vllm import LLM  # noqa: F401  (its import is what fails with CUDA torchvision on a CPU torch)
    except ImportError as e:
        detail = "" if e.name == "vllm" else f" ({type(e).__name__}: {e})"
        raise VllmUnavailable(INSTALL_HINT + detail) from None
    except Exception as e:  # e.g. "operator torchvision::nms does not exist": PyPI's CUDA torchvision
        raise VllmUnavailable(
            f"vLLM is installed but cannot be imported ({type(e).__name__}: {str(e)[:200]}); "
            "on CPU: pip uninstall torchvision torchaudio torchcodec, or make env-vllm"
        ) from e
    from vllm import SamplingParams

    if not hasattr(SamplingParams, "logprob_token_ids") or not hasattr(SamplingParams, "structured_outputs"):
        raise VllmUnavailable(
            f"vLLM {vllm.__version__} has no SamplingParams.logprob_token_ids / structured_outputs "
            "(label probabilities, constrained mode): pip install -U 'labeltune[vllm]'"
        )
    return vllm


def adapter_problem(adapter_dir: Path) -> str | None:
    """Why vLLM cannot serve this PEFT adapter as a LoRA (None: it can)."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        return (
            f"trains {', '.join(config['modules_to_save'])} in full (modules_to_save), which vLLM's LoRA "
            "cannot serve"
        )
    if config.get("peft_type", "LORA") != "LORA":
        return f"is a {config['peft_type']} adapter, not LoRA"
    if int(config.get("r", 0)) > LORA_RANKS[-1]:
        return f"has rank {config['r']} > {LORA_RANKS[-1]}"
    return None


def resolve_dtype(dtype: str, cuda: bool, capability: tuple[int, int] | None = None) -> str:
    """vLLM's dtype for labeltune's --dtype, decided as the hf engine decides it (labeltune.models): auto =
    fp32 on CPU, bf16 from compute capability 8, fp16 below (a T4 answers is_bf16_supported() True but
    only emulates bf16); a precision the device cannot compute well is refused (check_dtype)."""
    if cuda and capability is None:
        capability = gpu_capability()
    check_dtype(dtype, cuda, capability)
    return TORCH_DTYPES[select_precision(capability) if dtype == "auto" else dtype]


@dataclass(frozen=True)
class Device:
    """Where vLLM would run: CPU, or a GPU of this compute capability and memory (tests simulate GPUs)."""

    cuda: bool
    capability: tuple[int, int] | None = None
    memory_gib: float | None = None


def this_device() -> Device:
    if not cuda_available():
        return Device(cuda=False)
    return Device(cuda=True, capability=gpu_capability(), memory_gib=gpu_memory_gib())


@dataclass(frozen=True)
class VllmFacts:
    """What the installed vLLM accepts, read from its source of truth (tests build one by hand)."""

    has_bitsandbytes: bool
    fp16_refused: frozenset[str]  # model types vLLM refuses in float16
    gpu_memory_utilization: float  # share of the GPU's memory vLLM takes by default


# vllm/config/model.py (0.32.0 and 0.33.0): _FLOAT16_NOT_SUPPORTED_MODELS, checked by _check_valid_dtype
FP16_REFUSED = frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"})


def vllm_facts() -> VllmFacts:
    """The installed vLLM's quantization methods (vllm/model_executor/layers/quantization/__init__.py:
    0.32-0.34 list no bitsandbytes), float16-refused model types and default gpu_memory_utilization."""
    import_vllm()
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    try:
        from vllm.config.model import _FLOAT16_NOT_SUPPORTED_MODELS as refused
    except ImportError:  # a vLLM that moved it: the types of 0.32/0.33
        refused = FP16_REFUSED
    return VllmFacts(
        "bitsandbytes" in QUANTIZATION_METHODS,
        frozenset(refused),
        float(getattr(EngineArgs, "gpu_memory_utilization", 0.92)),
    )


def vllm_has_bitsandbytes() -> bool:
    """Whether this vLLM loads bitsandbytes 4-bit checkpoints (see vllm_facts)."""
    return vllm_facts().has_bitsandbytes


@dataclass
class Plan:
    """What VllmEngine hands vLLM for a run on a device, decided before anything loads."""

    model: str  # folder or Hugging Face id vLLM loads
    tokenizer: str
    adapter: str | None  # a LoRA adapter folder served on `model`
    dtype: str  # vLLM's dtype name
    model_type: str | None
    weights_gib: float | None  # the weights' size in vLLM's dtype (None: unknown)
    kwargs: dict = field(default_factory=dict)  # quantization, LoRA settings
    warning: str | None = None


NF4_BYTES = 0.56  # bitsandbytes NF4 with its block scales, per parameter
KV_HEADROOM_GIB = 1.0  # what vLLM needs beside the weights (activations, a minimal KV cache)


def _model_type(folder_or_id: str, preset) -> str | None:
    config = Path(folder_or_id) / "config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    return preset.model_type if preset is not None else None


def _params(folder_or_id: str, preset) -> float | None:
    """Parameter count: the preset's, else the folder's safetensors bytes over its dtype's width."""
    if preset is not None and preset.params_b:
        return preset.params_b * 1e9
    folder = Path(folder_or_id)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    config = (
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if (folder / "config.json").is_file()
        else {}
    )
    width = {"float32": 4}.get(str(config.get("torch_dtype") or config.get("dtype")), 2)
    return sum(f.stat().st_size for f in files) / width


def plan(run_dir: str | Path, info: RunInfo, dtype: str, device: Device, facts: VllmFacts) -> Plan:
    """How vLLM serves this run here, or a one-line ValueError naming what does work:
    - a merged16 export: its model/ folder;
    - an adapter vLLM's LoRA can serve, on the base it trained on; a 4-bit (bitsandbytes) base where
      this vLLM loads bitsandbytes, else the preset's 16-bit full_id (the adapter trained against NF4
      weights: labels may differ slightly from the evaluated run, said in a warning);
    - the dtype as the hf engine picks it, but float32 where vLLM refuses float16 for the model type
      (Gemma 2/3 on a T4: vLLM's _check_valid_dtype) and bf16 is not native;
    - on a GPU, refused when the weights do not fit the share of memory vLLM takes."""
    from labeltune.presets import PRESETS

    run_dir = Path(run_dir)
    preset = PRESETS.get(info.preset or "")
    kwargs: dict = {}
    warning = None
    quantized = False
    adapter = None
    if info.merged:
        model = tokenizer = str(run_dir / MERGED)
    elif (run_dir / ADAPTER / ADAPTER_CONFIG).is_file():
        if why := adapter_problem(run_dir / ADAPTER):
            raise ValueError(
                f"--run {run_dir}: its adapter {why}; export it merged first: "
                f"labeltune export --run {run_dir} --format merged16, and serve the export"
            )
        adapter = tokenizer = str(run_dir / ADAPTER)
        if not info.load_in_4bit:
            model = base_path(run_dir, info)
        elif device.cuda and facts.has_bitsandbytes:
            model, quantized = base_path(run_dir, info), True
            kwargs["quantization"] = "bitsandbytes"
        else:
            full = full_id_path(run_dir, info)
            if not full:
                raise ValueError(
                    f"--run {run_dir} was trained on a 4-bit (bitsandbytes) base, which this vLLM cannot load"
                    + (" (it lists no bitsandbytes quantization method)" if device.cuda else " on CPU")
                    + ", and its preset names no 16-bit base; export it merged first: labeltune export --run "
                    f"{run_dir} --format merged16 (LoRA merged into the 4-bit weights it trained on), and "
                    "serve the export"
                )
            model = full
            warning = (
                f"{run_dir} was trained on a 4-bit base, which "
                + (
                    "this vLLM cannot load (no bitsandbytes method)"
                    if device.cuda
                    else "vLLM loads on a GPU only"
                )
                + f"; its adapter is served on the 16-bit {info.full_id} (labels may differ slightly from "
                f"the run's evaluation; for the same weights: labeltune export --run {run_dir} --format "
                "merged16)"
            )
        rank = json.loads((run_dir / ADAPTER / ADAPTER_CONFIG).read_text(encoding="utf-8"))["r"]
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=min(r for r in LORA_RANKS if r >= rank))
    else:
        raise MissingRunFile(f"{run_dir}: no {MERGED}/ (merged16 export) or {ADAPTER}/ (trained run)")

    model_type = _model_type(model, preset)
    chosen, why = resolve_dtype(dtype, device.cuda, device.capability), ""
    if chosen == "float16" and model_type in facts.fp16_refused:
        if dtype == "fp16":
            raise ValueError(
                f"--dtype fp16: vLLM refuses float16 for {model_type} models (numerical instability); "
                "use --dtype fp32 (or bf16 on a GPU of compute capability 8+), or --engine hf"
            )
        chosen, why = "float32", f" (vLLM refuses float16 for {model_type}, and bf16 is emulated on this GPU)"
    params = _params(model, preset)
    weights_gib = (
        None if params is None else params * (NF4_BYTES if quantized else _BYTES[chosen]) / (1 << 30)
    )
    if device.cuda and weights_gib is not None and device.memory_gib:
        usable = device.memory_gib * facts.gpu_memory_utilization
        if weights_gib + KV_HEADROOM_GIB > usable:
            need = (weights_gib + KV_HEADROOM_GIB) / facts.gpu_memory_utilization
            hf = "on the run this was exported from" if info.merged else "the run as trained"
            raise ValueError(
                f"--run {run_dir}: vLLM would hold {params / 1e9:.1f}B parameters in {chosen}{why}, "
                f"~{weights_gib:.1f} GiB, and takes {facts.gpu_memory_utilization:.0%} of this GPU's "
                f"{device.memory_gib:.1f} GiB with room for its KV cache; label with --engine hf ({hf}), a "
                f"smaller preset, or a GPU with >= {math.ceil(need)} GiB"
            )
    return Plan(model, tokenizer, adapter, chosen, model_type, weights_gib, kwargs, warning)


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class VllmEngine:
    """A run served by vLLM (one engine per process: start it once, predict many times)."""

    name = "vllm"

    def __init__(
        self,
        run: Run | str | Path,
        dtype: str = "auto",
        threads: int | None = None,
        batch_size: int | None = None,
        *,
        kv_cache_gib: float | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        **llm_kwargs,
    ):
        """`run`: an opened run (labeltune.run.open_run) or its folder. `threads`: not applied (vLLM picks its
        own CPU threads; a warning says so). `batch_size`: the most sequences vLLM decodes at once (its
        max_num_seqs); None = vLLM's default. `kv_cache_gib`: KV cache size; default 2 GiB on CPU (vLLM
        would reserve 92% of the machine's RAM), vLLM's gpu_memory_utilization on a GPU. `enforce_eager`: no
        torch.compile (default on CPU, where compiling costs minutes of start-up). `llm_kwargs` go to
        vllm.LLM as they are."""
        self.run = run if isinstance(run, Run) else open_run(run)
        if threads is not None:
            warnings.warn(
                f"the vllm engine does not apply threads={threads}: vLLM picks its own CPU threads "
                "(VLLM_CPU_OMP_THREADS_BIND sets them)",
                stacklevel=2,
            )
        device = this_device()
        served = plan(self.run.dir, self.run.info, dtype, device, vllm_facts())
        if served.warning:
            warnings.warn(served.warning, stacklevel=2)
        self.dtype, kwargs = served.dtype, dict(served.kwargs)
        if batch_size is not None:
            kwargs["max_num_seqs"] = batch_size
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(served.tokenizer, trust_remote_code=False)
        ensure_pad_token(tokenizer)
        self.prompter = Prompter(tokenizer, self.run.template(), self.run.task, self.run.config.max_length)
        vllm = import_vllm()
        if (
            not device.cuda
        ):  # 32-token blocks (the least CPU attention takes; 128 by default): score mode's requests
            # share the prompt's full blocks through the prefix cache (1.8x faster score mode on the demo run)
            kwargs.update(kv_cache_memory_bytes=int((kv_cache_gib or 2) * (1 << 30)), block_size=32)
        elif kv_cache_gib:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        kwargs.update(  # generation_config="vllm": EOS is the tokenizer's alone, as in the hf engine
            tokenizer=served.tokenizer,
            dtype=self.dtype,
            seed=seed,
            enable_prefix_caching=True,
            generation_config="vllm",
            trust_remote_code=False,
            enforce_eager=(not device.cuda) if enforce_eager is None else enforce_eager,
            max_model_len=self.run.config.max_length + 128,
            **llm_kwargs,
        )
        started = time.perf_counter()
        self.llm = vllm.LLM(served.model, **kwargs)
        self.startup_s = time.perf_counter() - started
        self.lora = None
        if served.adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("labeltune", 1, served.adapter)

    def close(self) -> None:
        """Stop vLLM's engine process now (it also stops when the engine is garbage-collected)."""
        core = getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _generate(self, prompts: list[list[int]], params: list) -> list:
        from vllm import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora,
        )

    def next_logprobs(self, requests: list[tuple[list[int], list[int]]]) -> list[dict[int, float]]:
        """For each (token ids, allowed next tokens): log p of each allowed token after those ids,
        renormalised over the allowed ones (one vLLM request each; more where over MAX_IDS tokens)."""
        from vllm import SamplingParams

        parts = [
            (i, ids, allowed[k : k + MAX_IDS])
            for i, (ids, allowed) in enumerate(requests)
            for k in range(0, len(allowed), MAX_IDS)
        ]
        params = [
            SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=list(a), detokenize=False)
            for _, _, a in parts
        ]
        raw: list[dict[int, float]] = [{} for _ in requests]
        for (i, _, allowed), out in zip(parts, self._generate([ids for _, ids, _ in parts], params)):
            at = out.outputs[0].logprobs[0]
            raw[i].update({t: at[t].logprob for t in allowed})
        return [log_softmax(lp) for lp in raw]

    def predict(
        self,
        texts: list,
        mode: str,
        temperature: float = 1.0,
        score_estimate: str = "expected",
        label_bias: dict[str, float] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Label texts as labeltune.decode.predict does (same arguments, same Answer fields): render,
        decode in `mode`, parse. Empty texts get ok=False (empty_input) without decoding."""
        check_mode(mode, self.name, DECODERS)
        settings = DecodeSettings(temperature, score_estimate, label_bias, max_new_tokens)
        return answer_texts(self.prompter, texts, lambda prompts: DECODERS[mode](self, prompts, settings))


def _finished(
    engine: VllmEngine, outputs: list, settings: DecodeSettings, branch: list[int] | None = None
) -> list[Answer]:
    """Each greedy generation cut at EOS and parsed; with `branch` (one_token_labels), the label probabilities
    at the label's position where the answer took that path."""
    trie, at_label = engine.prompter.answer_trie, len(engine.prompter.answer_trie.shared)
    results = []
    for out in outputs:
        ids = list(out.outputs[0].token_ids)
        finished = trie.eos in ids
        if finished:
            ids = ids[: ids.index(trie.eos)]
        probs = None
        if branch is not None and len(ids) > at_label and tuple(ids[:at_label]) == trie.shared:
            at = out.outputs[0].logprobs[at_label]
            probs = first_token_label_probs(trie, {t: at[t].logprob for t in branch})
        text = engine.prompter.tokenizer.decode(ids, skip_special_tokens=False)
        results.append(generated_answer(text, finished, engine.run.task, probs, settings.temperature))
    return results


def _generated(engine: VllmEngine, prompts: list[list[int]], settings: DecodeSettings) -> list[Answer]:
    """generate: free greedy decoding until the tokenizer's EOS, then the strict parser."""
    from vllm import SamplingParams

    max_tokens = settings.max_new_tokens or engine.prompter.answer_budget + 8
    params = SamplingParams(temperature=0.0, detokenize=False, max_tokens=max_tokens)
    return _finished(engine, engine._generate(prompts, params), settings)


def _constrained(engine: VllmEngine, prompts: list[list[int]], settings: DecodeSettings) -> list[Answer]:
    """constrained: greedy decoding limited to the task's answers (structured outputs' choice), then
    parsed."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    answers = engine.run.task.all_answers()
    extra = {
        "max_tokens": max(len(a.encode("utf-8")) for a in answers) + 1,  # any spelling fits
        "structured_outputs": StructuredOutputsParams(choice=answers),
    }
    branch = one_token_labels(engine.prompter.answer_trie)
    if branch is not None:  # label probabilities, as the hf engine
        extra["logprob_token_ids"] = branch
    params = SamplingParams(temperature=0.0, detokenize=False, **extra)
    return _finished(engine, engine._generate(prompts, params), settings, branch)


def _scored(engine: VllmEngine, prompts: list[list[int]], settings: DecodeSettings) -> list[Answer]:
    """score: the label trie's nodes, then the chosen label's branching score nodes (see the module doc),
    each one next_logprobs request; labeltune.answers turns them into answers."""
    trie, task = engine.prompter.answer_trie, engine.run.task
    nodes = label_nodes(trie)
    lps = engine.next_logprobs(
        [(p + list(trie.shared + n), trie.allowed(trie.shared + n)) for p in prompts for n in nodes]
    )
    dists = [
        label_distribution(trie, dict(zip(nodes, lps[row * len(nodes) : (row + 1) * len(nodes)])))
        for row in range(len(prompts))
    ]
    chosen = [choose_label(dist, settings.temperature, settings.label_bias) for dist in dists]
    roots = [score_root(trie, label) for label in chosen]
    branching = {root: branching_nodes(trie, root) for root in set(roots) if has_score(trie, root)}
    asked = [(row, p) for row, root in enumerate(roots) if root in branching for p in branching[root]]
    lps = engine.next_logprobs(
        [(prompts[row] + list(roots[row] + p), trie.allowed(roots[row] + p)) for row, p in asked]
    )
    at_row: dict[int, dict[tuple, dict[int, float]]] = {}
    for (row, p), lp in zip(asked, lps):
        at_row.setdefault(row, {})[p] = lp
    return [
        scored_answer(
            trie,
            task,
            label,
            dist,
            score_distribution(trie, root, at_row[row]) if row in at_row else None,
            settings,
        )
        for row, (dist, label, root) in enumerate(zip(dists, chosen, roots))
    ]


# the vllm engine's decode modes (config.MODES names them): mode -> fn(engine, prompts, settings)
DECODERS = {"generate": _generated, "constrained": _constrained, "score": _scored}
