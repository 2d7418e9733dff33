"""labeltune: instruction-tune a causal LM (LoRA) to label texts, label CSVs with it, measure the labels.

From Python, with a run made by `labeltune train` (or an export):

    import labeltune

    labeller = labeltune.load_run("runs/demo")  # mode="score" by default
    labeller.predict(["今日は最高の一日"])      # [Prediction(text=..., label="1", name="positive", ...)]

`import labeltune` stays light (no torch): load_run, Labeller and Prediction (labeltune.api) are imported
on first use. The verbs' own functions are `labeltune.<verb>.main(config)` (labeltune.cli).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("labeltune")
except PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "unknown"

__all__ = ["Labeller", "Prediction", "__version__", "load_run"]
_API = ("Labeller", "Prediction", "load_run")


def __getattr__(name: str):
    if name in _API:
        from labeltune import api

        return getattr(api, name)
    raise AttributeError(f"module 'labeltune' has no attribute {name!r}")
