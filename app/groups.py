"""Feature groups: a JSON or TOML file mapping a group name to its columns; each group is one
KernelSHAP player (the way shap and alibi explain one-hot encoded categoricals).

    {"education": ["edu_Bachelors", "edu_HS-grad"], "age": ["age"]}      # groups.json
    education = ["edu_Bachelors", "edu_HS-grad"]                          # groups.toml

Columns named in no group stay players of their own, under their column name. Each player
takes the place of its first column, so the players keep the data's column order.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import DataError


@dataclass(frozen=True)
class Players:
    names: tuple[str, ...]  # (G,) group names, or column names for ungrouped columns
    columns: tuple[tuple[int, ...], ...]  # (G,) column indices of each player
    groups: dict[str, list[str]]  # the file's groups, as read, for summary.json


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such groups file. Pass --groups with a JSON or TOML file.") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror}).") from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}).") from None
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{path}: not valid TOML ({err}).") from None


def load_groups(path: str | Path, feature_names: list[str] | tuple[str, ...]) -> Players:
    """Players from a groups file over the data's columns. Raises DataError naming the file
    and the column for an unknown column, a column in two groups, an empty group, or a group
    named like an ungrouped column."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict) or not raw:
        raise DataError(
            f'{path}: expected a table of group name -> list of columns, e.g. {{"g": ["a", "b"]}}.'
        )
    index = {name: i for i, name in enumerate(feature_names)}
    owner: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for name, columns in raw.items():
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise DataError(f"{path}: group {name!r} must be a list of column names.")
        if not columns:
            raise DataError(f"{path}: group {name!r} lists no columns.")
        for column in columns:
            if column not in index:
                raise DataError(
                    f"{path}: group {name!r} names column {column!r}, which the data does not have "
                    f"(columns: {', '.join(feature_names)})."
                )
            if column in owner:
                raise DataError(
                    f"{path}: column {column!r} is in group {owner[column]!r} and in group {name!r}; "
                    "a column belongs to one group."
                )
            owner[column] = name
        groups[str(name)] = list(columns)
    players: list[tuple[int, str, tuple[int, ...]]] = []
    for name, columns in groups.items():
        indices = tuple(sorted(index[c] for c in columns))
        players.append((indices[0], name, indices))
    for column, i in index.items():
        if column not in owner:
            if column in groups:
                raise DataError(f"{path}: group {column!r} has the name of a column in no group; rename it.")
            players.append((i, column, (i,)))
    players.sort()
    return Players(tuple(p[1] for p in players), tuple(p[2] for p in players), groups)
