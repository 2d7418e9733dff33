"""Prompt rendering from Jinja2 templates in ``labeltune/templates/*.jinja``.

Training and inference render the prompt with the same function; the completion (the answer) is
never part of a template, it comes from ``TaskSpec.render_answer``.

Text from users is data: it is passed to the template as a variable (Jinja never re-renders a
variable's value, so ``{{ x }}`` in a post stays literal) and neutralised first, so a post cannot
forge an Alpaca section header: ``###`` becomes full-width ``＃＃＃``. Special-token strings such as
``<|end_of_text|>`` are neutralised at tokenisation time (see ``features.encode_prompt``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
import jinja2.sandbox

from labeltune.task import TaskSpec

PROMPTS_DIR = (
    Path(__file__).resolve().parent / "templates"
)  # package data (pyproject: tool.setuptools.package-data)


def available_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.jinja"))


@cache
def _environment(directory: str, sandboxed: bool) -> jinja2.Environment:
    """Templates shipped with labeltune render in a plain environment; any other template (a user's file,
    an export's or a shared run's template.jinja) in jinja2's immutable sandbox, where the attribute walks
    that reach Python builtins (``cycler.__init__.__globals__``) raise SecurityError instead of running."""
    cls = jinja2.sandbox.ImmutableSandboxedEnvironment if sandboxed else jinja2.Environment
    return cls(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def load_template(name_or_path: str) -> jinja2.Template:
    """A template by name (``labeltune/templates/<name>.jinja``) or by path to a ``.jinja`` file
    (sandboxed)."""
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_file():
        folder = path.parent.resolve()  # the file's own folder, also for a link (a Hub cache snapshot's)
        try:
            return _environment(str(folder), folder != PROMPTS_DIR).get_template(path.name)
        except jinja2.TemplateError as e:
            raise ValueError(f"{path}: not a usable prompt template ({type(e).__name__}: {e})") from None
    if name_or_path not in available_templates():
        raise ValueError(f"unknown template {name_or_path!r}; available: {', '.join(available_templates())}")
    return _environment(str(PROMPTS_DIR), False).get_template(f"{name_or_path}.jinja")


def is_shipped(template: jinja2.Template) -> bool:
    """Whether `template` is one of labeltune's own files (not a user's or a shared run's)."""
    return template.filename is not None and Path(template.filename).resolve().parent == PROMPTS_DIR


def as_data(value: str) -> str:
    """Neutralise user text so it cannot open a section: newlines normalised, ``###`` made full-width."""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").replace("###", "＃＃＃")


def render_prompt(template: jinja2.Template, task: TaskSpec, text: str, **fields: str) -> str:
    """The prompt for one example; the model's answer starts right after it."""
    data = {key: as_data(value) for key, value in fields.items()}
    try:
        return template.render(text=as_data(text), labels=task.label_values, task=task.name, **data)
    except jinja2.exceptions.SecurityError as e:  # only a sandboxed (not shipped) template gets here
        raise ValueError(
            f"{template.filename}: the prompt template tried something a template may not do ({e}); "
            "it was stopped before running anything: use a template that only prints its variables"
        ) from None
