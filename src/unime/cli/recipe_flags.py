"""Command-line flags derived from a recipe dataclass: one flag per field, so every field can be
overridden and the training commands share their flags by construction.

A field's type gives the flag's kind: ``bool`` a ``--x/--no-x`` pair (with ``choices``, such as
``bf16``'s ``auto``, ``--x VALUE`` also takes a named value), ``int``/``float``/``str`` a
value (with the field's ``choices``), ``list[str]`` / ``list[int]`` one or more values (space- or
comma-separated), ``dict[str, float]`` ``NAME=VALUE`` items. A flag left out keeps the recipe's
value; ``null_flag`` (e.g. ``--mini-batch-size 0``) sets the field to null. The library never
sees the argparse namespace: :func:`recipe_from_args` turns it into a validated recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from unime.choices import choice_name

CONFIG_HELP = "recipe YAML file or packaged recipe name ({names}); flags override it (default: the built-in defaults)"


def _base_type(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """(origin, args) of an annotation with ``None`` removed: ``int | None`` -> (int, ())."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0]
    origin = typing.get_origin(annotation)
    return (origin or annotation), typing.get_args(annotation)


def split_names(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: names given space- or comma-separated, one format everywhere."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise ValueError("give at least one name")
    return names


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected whole numbers, got {text!r}") from None


def _weights(values: list[str]) -> dict[str, float]:
    weights = {}
    for item in split_names(values) or []:
        name, sep, weight = item.partition("=")
        try:
            weights[name] = float(weight)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"expected NAME=WEIGHT, got {item!r}")
    return weights


def _switch_value(flag: str, choices: tuple[Any, ...]) -> Any:
    """The argparse ``type`` of a switch with named values: ``true`` / ``false`` / a named choice."""
    names = {choice_name(choice): choice for choice in choices}

    def parse(text: str) -> Any:
        if text.lower() not in names:
            raise argparse.ArgumentTypeError(f"{flag} takes {', '.join(names)}, got {text!r}")
        return names[text.lower()]

    return parse


def add_recipe_flags(parser: argparse.ArgumentParser, recipe_cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``recipe_cls`` (its metadata gives help, choices and aliases)."""
    hints = typing.get_type_hints(recipe_cls)
    group = parser.add_argument_group("recipe settings (each overrides the recipe's value)")
    for spec in dataclasses.fields(recipe_cls):
        if spec.name in skip:
            continue
        meta = spec.metadata
        flag = "--" + spec.name.replace("_", "-")
        kind, args = _base_type(hints[spec.name])
        options: dict[str, Any] = {"dest": spec.name, "default": None, "help": meta.get("help", "")}
        if kind is bool and meta.get("choices"):
            # A switch with named values too (bf16: auto): --x alone is true, --x VALUE picks one, --no-x false.
            group.add_argument(flag, nargs="?", const=True, type=_switch_value(flag, meta["choices"]),
                               metavar="{" + ",".join(choice_name(c) for c in meta["choices"]) + "}", **options)
            group.add_argument("--no-" + flag[2:], dest=spec.name, action="store_const", const=False, default=None,
                               help=f"same as {flag} false")
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind is list:
            group.add_argument(flag, nargs="+", metavar=spec.name.upper(), **options)
        elif kind is dict:
            group.add_argument(flag, nargs="+", metavar="NAME=WEIGHT", **options)
        else:
            if meta.get("choices"):
                options["choices"] = meta["choices"]
            group.add_argument(flag, type=kind, **options)
        for alias, value in meta.get("aliases", {}).items():
            group.add_argument(alias, dest=spec.name, action="store_const", const=value, default=None,
                               help=f"same as {flag if value else '--no-' + flag[2:]}")


def recipe_from_args(args: argparse.Namespace, recipe_cls: type, *, skip: tuple[str, ...] = ()) -> Any:
    """The recipe of ``args.config`` (or the class defaults) with every given flag applied, re-validated."""
    recipe = recipe_cls.from_yaml(args.config) if getattr(args, "config", None) else recipe_cls()
    hints = typing.get_type_hints(recipe_cls)
    given: dict[str, Any] = {}
    for spec in dataclasses.fields(recipe_cls):
        value = getattr(args, spec.name, None)
        if spec.name in skip or value is None:
            continue
        kind, kind_args = _base_type(hints[spec.name])
        flag = "--" + spec.name.replace("_", "-")
        try:
            if kind is list:
                value = split_names(value)
                if kind_args and kind_args[0] is int:
                    value = [_integer(item) for item in value]
            elif kind is dict:
                value = _weights(value)
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None
        if "null_flag" in spec.metadata and value == spec.metadata["null_flag"]:
            value = None
        given[spec.name] = value
    try:
        return dataclasses.replace(recipe, **given)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{error}") from None
