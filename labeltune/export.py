"""labeltune export: a trained run as an adapter, a merged 16-bit model, or GGUF.

    labeltune export --run runs/demo --format adapter  --output exports/demo-adapter
    labeltune export --run runs/demo --format merged16 --output exports/demo-merged
    labeltune export --run runs/gemma2 --format gguf --quant q4_k_m      # needs unsloth on a GPU
    HF_TOKEN=... labeltune export --run runs/demo --format merged16 --push-to-hub me/my-labeller

`adapter` and `merged16` outputs are themselves run directories (config.yaml, model.json, data/,
calibration.json), so `labeltune label --run <export>` and `labeltune evaluate --run <export>` work on
them. Each also carries a model card (README.md, labeltune.card: base model, task and labels, data,
test metrics, calibration, how to load it with labeltune and with transformers/PEFT), the prompt
template (template.jinja) and the task spec (task.yaml) the run was trained with.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from labeltune import gemma3
from labeltune.card import made_from_gemma, model_card
from labeltune.hub import foreign_link, in_cache
from labeltune.merge import Nf4, base_files, files_sha256, merge_lora, needs_for_files, needs_for_params
from labeltune.models import (
    bnb_4bit_unavailable,
    cuda_available,
    import_unsloth,
    unsloth_installed,
)
from labeltune.presets import resolve_preset
from labeltune.run import (
    ADAPTER,
    BASE,
    CALIBRATION,
    CONFIG,
    DATA,
    DATA_SUMMARY,
    INFO,
    MERGED,
    MODEL_CARD,
    PEFT_FILE_PREFIX,
    TASK,
    TEMPLATE,
    TRAIN_LOG,
    VERSIONS,
    RunInfo,
    base_path,
    full_id_path,
    locate_run,
    open_run,
)
from labeltune.task import task_path

FORMATS = ("adapter", "merged16", "gguf")
# what an export carries besides the weights: the fitted temperature too (the exported model computes the
# run's label probabilities, so the same temperature calibrates them)
# and, from a run of gemma3-270m, the Gemma notice and terms, which must travel with the weights
RUN_FILES = (CONFIG, VERSIONS, DATA, CALIBRATION, TRAIN_LOG, *gemma3.NOTICE_FILES)


def _copy_run_files(run_dir: Path, out: Path, include_data: bool = False) -> None:
    """The run's files (RUN_FILES), its template and task spec files, as trained; of data/ only its
    summary.json unless `include_data` (the splits hold every labelled post, often private or licensed).
    A link among them is refused: an export of a shared run must never carry (and push) a file from
    elsewhere on this machine. An export of a gemma3-270m run whose notice files are missing gets them
    from the package."""
    for name in RUN_FILES:
        if name == DATA and not include_data:
            name = f"{DATA}/{DATA_SUMMARY}"
        src = run_dir / name
        links = [
            p
            for p in (src, *(src.rglob("*") if src.is_dir() and not src.is_symlink() else ()))
            if foreign_link(run_dir, p)
        ]
        if links:
            raise ValueError(
                f"--run {run_dir}: {links[0]} is a link; an export copies files of the run only: "
                "replace the link by the file"
            )
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / name)
    run = open_run(run_dir)
    shutil.copy2(run.template().filename, out / TEMPLATE)
    own_task = run_dir / TASK
    shutil.copy2(
        own_task
        if own_task.is_file() and not foreign_link(run_dir, own_task)
        else task_path(run.config.task),
        out / TASK,
    )
    if made_from_gemma(run.info) and not all((out / name).is_file() for name in gemma3.NOTICE_FILES):
        gemma3.copy_notice(out)


def hub_token(repo_id: str) -> str:
    """The token --push-to-hub will use, found as huggingface_hub finds it (HF_TOKEN, or the one saved by
    `hf auth login`; no network), with the repo id's syntax checked: both before anything is written."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(
            f"--push-to-hub {repo_id!r}: not a Hugging Face repo id ({e}); use NAME or USER/NAME"
        ) from None
    token = get_token()
    if not token:
        raise ValueError(
            "--push-to-hub needs a Hugging Face token with write access: export HF_TOKEN=hf_... or run "
            "`hf auth login` (nothing was exported)"
        )
    return token


def _push(out: Path, repo_id: str, token: str) -> None:
    from huggingface_hub import HfApi

    files = sorted(p for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"pushing {len(files)} files ({size / 2**20:.1f} MiB) to {repo_id} (private):")
    for path in files:
        print(f"  {path.relative_to(out)}  ({path.stat().st_size / 2**20:.2f} MiB)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=True, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id)
    except Exception as e:  # network, permission, rate limit ...: the export itself is complete
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise OSError(
            f"exported to {out}, but pushing it to {repo_id} failed ({type(e).__name__}: {first}); push it "
            f"again with `hf upload {repo_id} {out} --private`"
        ) from e
    print(f"pushed {out} -> https://huggingface.co/{repo_id} (private)")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an --output that is a file, or a non-empty folder without --overwrite."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} is a file; export writes a folder: choose another --output")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another --output")


def export_adapter(run_dir: Path, out: Path, include_data: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _copy_run_files(run_dir, out, include_data)
    shutil.copytree(run_dir / ADAPTER, out / ADAPTER, dirs_exist_ok=True)
    info = RunInfo.load(run_dir)
    if info.base == BASE + "/":  # tiny: the base travels with the adapter
        shutil.copytree(run_dir / BASE, out / BASE, dirs_exist_ok=True)
    info.save(out)


GIB = 1 << 30


def available_ram() -> int | None:
    """Bytes of memory this machine can still give (Linux MemAvailable); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def free_disk(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def hub_cache() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def check_merge_fits(info: RunInfo, base: str, out: Path, dtype: str) -> None:
    """Refuse a merged16 export this machine cannot hold, before anything is downloaded or loaded, saying
    what it needs: RAM for the streamed merge (labeltune.merge) and disk for the merged checkpoint (plus
    the 16-bit base's download when it is not a local folder)."""
    local = Path(base).is_dir()
    if local:
        needs = needs_for_files(base_files(Path(base)), dtype)
        download = 0
    else:
        params_b = resolve_preset(info.preset).params_b if info.preset else 0.0
        if not params_b:
            return  # a model of unknown size: nothing to check against
        # the largest tensor (the embeddings: Gemma 2 9B 256000 x 3584) is at most ~10% of these models,
        # the largest LoRA target (an MLP projection) under 1%; the 16-bit bases are bf16
        needs = needs_for_params(params_b * 1e9, params_b * 1e8, params_b * 1e7, dtype)
        # the base: bf16 safetensors, or a 4-bit checkpoint (NF4 layers, 16-bit embeddings: < 0.7 bytes a
        # parameter)
        download = int(params_b * 1e9 * (0.7 if info.load_in_4bit else 2))
    problems = []
    ram = available_ram()
    if ram is not None and ram < needs.ram:
        problems.append(
            f"{needs.ram / GIB:.1f} GiB of free RAM (this machine has {ram / GIB:.1f} GiB available)"
        )
    disk_out, disk_need = free_disk(out), needs.disk
    if download:  # the base's download and the merged copy may share one filesystem
        cache = hub_cache()
        if _existing(cache).stat().st_dev == _existing(out).stat().st_dev:
            disk_need += download
        elif free_disk(cache) < download:
            problems.append(
                f"{download / GIB:.1f} GiB of free disk in {cache} for the base {base}"
                f" (free: {free_disk(cache) / GIB:.1f} GiB)"
            )
    if disk_out < disk_need:
        what = " for the merged model" + (" and the base's download" if disk_need > needs.disk else "")
        problems.append(
            f"{disk_need / GIB:.1f} GiB of free disk at {out}{what} (free: {disk_out / GIB:.1f} GiB)"
        )
    if problems:
        raise ValueError(
            f"merged16 export of {info.preset or base} needs "
            + " and ".join(problems)
            + "; free some, export on a larger machine, or use --format adapter (a few MB; labels the same)"
        )


LOAD_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def linear_weights(base_dir: Path) -> frozenset[str]:
    """Names of the weights transformers quantises when it loads this model in 4-bit: every nn.Linear
    but the output layer (found on a model built on the meta device: no memory, nothing loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
        )
    head = model.get_output_embeddings()
    return frozenset(
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    )


def merge_base(run_dir: Path, info: RunInfo) -> str:
    """The checkpoint the merge starts from: the one the run trained on when it trained 4-bit (the LoRA
    weights were learnt against its NF4 weights); else the 16-bit base (a 4-bit preset's full_id)."""
    if info.load_in_4bit:
        return base_path(run_dir, info)
    return full_id_path(run_dir, info) or base_path(run_dir, info)


def export_merged16(run_dir: Path, out: Path, dtype: str = "float16", include_data: bool = False) -> None:
    """Merge LoRA into a 16-bit copy of the base, streamed tensor by tensor (labeltune.merge): the 8B/9B
    presets merge in a few GiB of RAM. A run trained on a 4-bit base is merged into the weights it
    trained against (dequantised NF4), so the merged model labels as the evaluated run did. Checks the
    machine first (check_merge_fits), then downloads the base's safetensors when it is a hub id."""
    info = RunInfo.load(run_dir)
    if info.load_in_4bit and (why := bnb_4bit_unavailable(cuda_available())):
        raise ValueError(
            f"{run_dir} was trained on a 4-bit base, whose NF4 weights the merge starts from: {why}"
        )
    base = merge_base(run_dir, info)
    check_merge_fits(info, base, out, dtype)
    base_dir = Path(base)
    if not base_dir.is_dir():
        from huggingface_hub import snapshot_download

        base_dir = Path(snapshot_download(base, allow_patterns=["*.safetensors", "*.json"]))
    nf4 = None
    if info.load_in_4bit and "quantization_config" not in json.loads(
        (base_dir / "config.json").read_text(encoding="utf-8")
    ):
        nf4 = Nf4(linear_weights(base_dir), LOAD_DTYPE[info.precision or "fp32"])
    written = merge_lora(
        base_dir,
        run_dir / ADAPTER,
        out / MERGED,
        dtype,
        nf4=nf4,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    for path in (run_dir / ADAPTER).iterdir():  # the run's tokenizer files, as saved beside its adapter
        if path.is_file() and not path.name.startswith(PEFT_FILE_PREFIX) and path.name != MODEL_CARD:
            shutil.copy2(path, out / MERGED / path.name)
    _copy_run_files(run_dir, out, include_data)
    replace(
        info,
        base=MERGED + "/",
        merged=True,
        merged_dtype=dtype,
        load_in_4bit=False,
        merged_from=base + (" (dequantised NF4)" if info.load_in_4bit else ""),
        weights_sha256=files_sha256(written),
    ).save(out)


# llama.cpp's converter writes f16 or bf16 (unsloth/save.py save_to_gguf asserts one of the two, 2026.10.7):
# the merged weights are written in the precision the run computed in (fp32 runs, on a CPU: f16)
GGUF_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float16"}


def gguf_arguments(info: RunInfo, merged_dir: Path, out: Path, quant: str) -> dict:
    """Keyword arguments of Unsloth's HF-folder-to-GGUF conversion (unsloth.save.save_to_gguf: model_name,
    model_type, model_dtype, is_sentencepiece, model_directory, quantization_method, ..., gguf_directory;
    unsloth/save.py:2133 in 2026.10.7, :2341 in 2026.10.9, called the same way by its save_pretrained_gguf)
    for `merged_dir`, the run's merged16 export (labeltune.merge: a 4-bit run's LoRA merged into the NF4
    weights it trained against, so the GGUF starts from the weights the run was evaluated with)."""
    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    return {
        "model_name": str(merged_dir),
        "model_type": config["model_type"],
        "model_dtype": GGUF_DTYPE[info.precision or "fp16"],
        "is_sentencepiece": False,
        "model_directory": str(merged_dir),
        "quantization_method": [quant.lower()],
        "gguf_directory": str(out),
    }


def export_gguf(run_dir: Path, out: Path, quant: str, convert=None, include_data: bool = False) -> None:
    """The run's merged16 export (labeltune.merge, as `--format merged16` writes it, in the run's precision),
    converted by Unsloth's llama.cpp converter (`convert`: unsloth.save.save_to_gguf by default), all in
    `<out>.partial`, renamed to `out` once the .gguf is written: a failed or killed export never leaves a
    folder that looks complete. Any failure of the converter is one line (ValueError)."""
    if not (cuda_available() and unsloth_installed()):
        raise ValueError(
            "GGUF export goes through Unsloth (it builds llama.cpp) and needs a CUDA GPU with "
            "`pip install -e '.[gpu]'`. Here: export --format merged16, then run llama.cpp's "
            "convert_hf_to_gguf.py and llama-quantize on <output>/model."
        )
    info = RunInfo.load(run_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged = partial / "merged16"
    export_merged16(run_dir, merged, GGUF_DTYPE[info.precision or "fp16"])
    if convert is None:
        import_unsloth()  # before trl/transformers/peft are patched by anything else in a fresh process
        from unsloth.save import save_to_gguf as convert
    try:
        convert(**gguf_arguments(info, merged / MERGED, partial, quant))
    except Exception as e:  # the converter raises RuntimeError, CalledProcessError, OSError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(
            f"GGUF conversion failed ({type(e).__name__}: {first}); the merged16 export it converts is "
            f"kept in {merged} (label with it, or convert it with llama.cpp yourself)"
        ) from e
    if not list(partial.glob("*.gguf")):
        raise ValueError(
            f"GGUF conversion wrote no .gguf file in {partial}; the merged16 export is kept in {merged}"
        )
    shutil.rmtree(merged)  # the GGUF holds the same weights; the merged copy is the size of the model again
    _copy_run_files(run_dir, partial, include_data)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def default_output(run: str, run_dir: Path, fmt: str) -> Path:
    """<run>-<format> beside the run; for a run from the Hub (in the Hugging Face cache), <name>-<format> in
    the current folder."""
    if in_cache(run_dir):
        return Path(f"{Path(run.split('@')[0]).name}-{fmt}")
    return run_dir.parent / f"{run_dir.name}-{fmt}"


def main(cfg) -> Path:
    run_dir = locate_run(cfg.run)  # a Hub repo id: its snapshot in the Hugging Face cache
    if not (run_dir / INFO).is_file() or not (run_dir / ADAPTER).is_dir():
        raise FileNotFoundError(f"{run_dir}: not a trained run (no {INFO} / {ADAPTER}/)")
    out = Path(cfg.output) if cfg.output else default_output(cfg.run, run_dir, cfg.format)
    check_output(out, cfg.overwrite)
    token = hub_token(cfg.push_to_hub) if cfg.push_to_hub else None  # before anything is written
    if cfg.format == "adapter":
        export_adapter(run_dir, out, cfg.include_data)
    elif cfg.format == "merged16":
        export_merged16(run_dir, out, cfg.dtype, cfg.include_data)
    else:
        export_gguf(run_dir, out, cfg.quant, include_data=cfg.include_data)
    if cfg.format != "gguf":
        (out / MODEL_CARD).write_text(model_card(run_dir, out, cfg.format), encoding="utf-8")
    print(
        f"exported {run_dir} as {cfg.format} -> {out}"
        + ("" if cfg.format == "gguf" else " (model card: README.md)")
        + (
            "; with its data splits (--include-data)"
            if cfg.include_data
            else "; without its training data (data/summary.json only; --include-data adds the splits)"
        )
    )
    if cfg.push_to_hub:
        _push(out, cfg.push_to_hub, token)
    if cfg.format == "gguf":
        print(f"next: load the .gguf file in {out} with llama.cpp (llama-cli -m <file>)")
    else:
        print(
            f"next: labeltune label --run {out} --input posts.csv --output labelled.csv, or from Python "
            f'labeltune.load_run("{out}").predict([...]); transformers/PEFT: see {out / MODEL_CARD}'
        )
    return out
