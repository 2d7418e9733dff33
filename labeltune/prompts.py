"""Prompt rendering from Jinja2 templates in ``labeltune/templates/*.jinja``.

Training and inference render the prompt with the same function; the completion (the answer) is
never part of a template, it comes from ``TaskSpec.render_answer``.

Text from users is data: it is passed to the template as a variable (Jinja never re-renders a
variable's value, so ``{{ x }}`` in a post stays literal) and neutralised first, so a post cannot
forge an Alpaca section header: ``###`` becomes full-width ``＃＃＃``. Special-token strings such as
``<|end_of_text|>`` are neutralised at tokenisation time (see ``features.encode_prompt``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from labeltune.task import TaskSpec

PROMPTS_DIR = Path(__file__).resolve().parent / "templates"  # package data (pyproject: tool.setuptools.package-data)


def available_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.jinja"))


@lru_cache(maxsize=None)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def load_template(name_or_path: str) -> jinja2.Template:
    """A template by name (``labeltune/templates/<name>.jinja``) or by path to a ``.jinja`` file."""
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_file():
        return _environment(str(path.resolve().parent)).get_template(path.name)
    if name_or_path not in available_templates():
        raise ValueError(f"unknown template {name_or_path!r}; available: {', '.join(available_templates())}")
    return _environment(str(PROMPTS_DIR)).get_template(f"{name_or_path}.jinja")


def as_data(value: str) -> str:
    """Neutralise user text so it cannot open a section: newlines normalised, ``###`` made full-width."""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").replace("###", "＃＃＃")


def render_prompt(template: jinja2.Template, task: TaskSpec, text: str, **fields: str) -> str:
    """The prompt for one example; the model's answer starts right after it."""
    data = {key: as_data(value) for key, value in fields.items()}
    return template.render(text=as_data(text), labels=task.label_values, task=task.name, **data)
