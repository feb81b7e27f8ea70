"""Write docs/api.md, the API reference, from the docstrings of the public names.

    python docs/gen_api.py            # rewrites docs/api.md
    python docs/gen_api.py --out X    # writes X instead (the test compares the two)

The public names are each module's ``__all__``; a class lists the public methods
and properties it defines itself (not those it inherits from torch or Lightning,
nor Lightning's hooks, which the Trainer calls).
The output depends only on the source: no addresses, no environment.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

#: The modules documented, in this order (a user's entry points first).
MODULES = (
    "hadainit",
    "hadainit.ufm",
    "hadainit.ufm.forecast",
    "hadainit.metrics",
    "hadainit.metrics.functional",
    "hadainit.metrics.logits",
    "hadainit.drift",
    "hadainit.callbacks",
    "hadainit.experiments",
)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
#: Lightning's hooks (``on_*``, setup, teardown): called by the Trainer, not by users; not listed.
_HOOKS = ("setup", "teardown")


def _annotation(annotation) -> str:
    if isinstance(annotation, str):
        return annotation.strip("'\"")
    return inspect.formatannotation(annotation)


def signature(obj, *, bound: bool = False, returns: bool = True) -> str:
    """``(a, b: int = 1, *, c: str = 'x') -> T`` without quotes around string annotations;
    ``bound`` drops the first parameter (``self`` or ``cls``)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts, star_done = [], False
    params = list(sig.parameters.values())[1 if bound else 0 :]
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    out = f"({', '.join(parts)})"
    if returns and sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return _ADDRESS.sub("", out)


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    return _ADDRESS.sub("", doc) if doc else ""


def _block(text: str) -> list[str]:
    return ["```text", *text.splitlines(), "```", ""] if text else ["(no docstring)", ""]


def _own_members(cls) -> list[tuple[str, object, str]]:
    """``(name, object, kind)`` of the public methods and properties ``cls`` defines itself."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_") or name.startswith("on_") or name in _HOOKS:
            continue
        if isinstance(value, property):
            members.append((name, value, "property"))
        elif isinstance(value, (staticmethod, classmethod)):
            members.append((name, value.__func__, type(value).__name__))
        elif inspect.isfunction(value):
            members.append((name, value, "method"))
    return members


def _entry(module_name: str, name: str, obj) -> list[str]:
    qualified = f"{module_name}.{name}"
    if inspect.isclass(obj):
        lines = [f"### class `{qualified}{signature(obj, returns=False)}`", "", *_block(_doc(obj))]
        for member, value, kind in _own_members(obj):
            if kind == "property":
                lines += [f"#### property `{name}.{member}`", "", *_block(_doc(value))]
            else:
                prefix = "" if kind == "method" else f"{kind} "
                lines += [f"#### {prefix}`{name}.{member}{signature(value, bound=kind != 'staticmethod')}`", "",
                          *_block(_doc(value))]
        return lines
    if inspect.isroutine(obj):
        return [f"### `{qualified}{signature(obj)}`", "", *_block(_doc(obj))]
    if inspect.ismodule(obj):
        return [f"### module `{obj.__name__}`", "", *_block((_doc(obj).split("\n\n") or [""])[0])]
    value = _ADDRESS.sub("", repr(obj))
    return [f"### `{qualified}`", "", "```python", f"{name} = {value}", "```", ""]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py` (do not edit by hand; "
        "`tests/test_docs.py` checks that it is up to date). The mathematics is in "
        "[theory.md](theory.md), cited by section.",
        "",
    ]
    for module_name in MODULES:
        lines.append(f"- [`{module_name}`](#{module_name.replace('.', '')})")
    lines.append("")
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = list(getattr(module, "__all__", ()))
        lines += [f"## {module_name}", "", *_block(_doc(module))]
        if not names:
            lines += ["No public names beyond the command line (`hadainit --help`).", ""]
        for name in names:
            lines += _entry(module_name, name, getattr(module, name))
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "api.md", help="where to write (default docs/api.md)")
    args = parser.parse_args(argv)
    args.out.write_text(render(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
