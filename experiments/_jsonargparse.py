"""The only module that reads jsonargparse's (and argparse's) internals: ``hadainit train``'s parser fix and its
one-line errors. jsonargparse's exceptions carry nothing but text (a dump of every type it tried), so the option,
the value and the reason of a refused command line are read from the structure of the error instead; each use is
named here and tested against the pinned jsonargparse (constraints.txt) in ``tests/test_cli.py``
(``test_parser_errors_are_one_line_from_the_chain``, ``test_batch_limits_are_counts_as_ints_and_fractions_as_floats``)
and ``tests/test_jsonargparse_adapter.py``.

=====================================  ===============================================================
internal                               used by
=====================================  ===============================================================
``parser._actions`` (argparse), each   :func:`counts_before_fractions`, :func:`typehint`
action's ``_typehint`` (jsonargparse's
``ActionTypeHint``)
the traceback frames of the error      :func:`given` (argparse's ``Action.__call__(parser, namespace,
chain and their locals                 values, option_string)``), :func:`actions` (``self`` of an
                                       Action's methods), :func:`instance_of` (``self`` of the
                                       ``__init__`` that refused), :func:`raised_in` (the module of
                                       the innermost frame)
=====================================  ===============================================================
"""

from __future__ import annotations

import argparse
import functools
import inspect
import operator
import types
import typing


def counts_before_fractions(parser) -> None:
    """The trainer's int-or-float options (``limit_*_batches``, ``val_check_interval``, ...) try int first.

    Lightning takes an int as a count of batches and a float as a fraction of them; jsonargparse tries a union's
    subtypes in the given order, and typing's union cache can hand it the signature's ``Union[int, float]`` as
    ``Union[float, int]``, which reads ``1`` as ``1.0``: all batches. ``types.UnionType`` keeps the order."""
    for action in parser._actions:
        hint = typehint(action)
        args = typing.get_args(hint)
        if action.dest.startswith("trainer.") and typing.get_origin(hint) is typing.Union and {int, float} <= set(args):
            ordered = sorted(args, key=lambda t: (t is not int, t is not float))  # int, float, then the rest (None)
            action._typehint = functools.reduce(operator.or_, ordered)


def typehint(action: argparse.Action):
    """The type hint jsonargparse checks an option's value against (None for a plain argparse option)."""
    return getattr(action, "_typehint", None)


def chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from, outermost first."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return seen


def _frames(err: BaseException):
    tb = err.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def raised_in(err: BaseException, package: str) -> bool:
    """``err`` was raised by code of ``package`` (its traceback's innermost frame)."""
    frames = list(_frames(err))
    name = frames[-1].f_globals.get("__name__", "") if frames else ""
    return name == package or name.startswith(package + ".")


def actions(err: BaseException) -> list[argparse.Action]:
    """The parser actions (options) in whose methods ``err`` travelled, outermost first."""
    found = [f.f_locals.get("self") for f in _frames(err)]
    return list(dict.fromkeys(a for a in found if isinstance(a, argparse.Action)))


def given(errors: list[BaseException]) -> tuple[argparse.Action, str, object] | None:
    """``(action, option string, value)`` of the outermost option the parser called (argparse's
    ``Action.__call__(parser, namespace, values, option_string)``) on the way to the error; None if none was."""
    for err in errors:
        for frame in _frames(err):
            action = frame.f_locals.get("self")
            if isinstance(action, argparse.Action) and frame.f_code.co_name == "__call__":
                info = inspect.getargvalues(frame)
                args = [info.locals[a] for a in info.args[1:]] + list(info.locals.get(info.varargs) or ())
                if len(args) >= 4 and isinstance(args[3], str):
                    return action, args[3], args[2]
    return None


def instance_of(err: BaseException) -> str | None:
    """The class whose ``__init__`` raised ``err`` (the outermost such frame outside jsonargparse), else None."""
    for frame in _frames(err):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals \
                and not frame.f_globals.get("__name__", "").startswith("jsonargparse"):
            return type(frame.f_locals["self"]).__name__
    return None


def type_name(hint) -> str:
    """A type hint in words: ``int or None``, ``one of 'a', 'b'``, ``ClassificationData``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(t) for t in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is not None and args:  # list[Callback], Iterable[Logger]
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return str(hint).replace("typing.", "")
