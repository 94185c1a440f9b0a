"""docs/design.md's layout is the code's: every room listed exists, every room is listed, and no room
imports one listed below it (scripts/import_graph.py reads the imports from the source)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "unime"
# Kept only as deprecated names of moved modules; docs/design.md lists them after the rooms.
ALIASES = {"images", "tiny", "default_model"}
NOT_ROOMS = {"__init__", "__main__", "py.typed", "recipes", "weights", "assets", "__pycache__"}


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _listed_rooms() -> list[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [match.group(1).rstrip("/").removesuffix(".py") for match in re.finditer(r"^  (\S+)\s", block, re.M)]


def test_every_room_is_listed_once_and_exists():
    listed = _listed_rooms()
    assert len(listed) == len(set(listed))
    present = {path.stem if path.suffix == ".py" else path.name for path in PACKAGE.iterdir()}
    rooms = present - NOT_ROOMS - ALIASES
    assert set(listed) == rooms, f"listed but missing: {set(listed) - rooms}; present but not listed: {rooms - set(listed)}"
    for alias in ALIASES:
        assert f"`{alias}.py`" in (ROOT / "docs" / "design.md").read_text()


def test_no_room_imports_one_listed_below_it_and_no_cycles():
    graph = _graph_module()
    files = {graph.module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    known = set(files)
    order = {f"unime.{room}": rank for rank, room in enumerate(_listed_rooms())}
    downward = []
    for name, path in files.items():
        source = graph.room(name)
        if source not in order:  # the package itself, __main__, the deprecated aliases
            continue
        for target in graph.imports(path, name, known):
            room = graph.room(target)
            if room in order and order[room] > order[source]:
                downward.append(f"{name} imports {target} ({room} is listed below {source})")
    assert not downward, "\n".join(downward)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "0 module cycles, 0 room cycles" in done.stdout


def test_deprecated_names_warn_and_give_the_moved_module(monkeypatch):
    import importlib
    import warnings

    import pytest

    for old, new in (("unime.images", "unime.io.images"), ("unime.tiny", "unime.models.tiny"),
                     ("unime.default_model", "unime.models.default")):
        monkeypatch.delitem(sys.modules, old, raising=False)
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: import {new}"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
    from unime.models import tiny

    calls = []
    monkeypatch.setattr(tiny, "make_llava_random", lambda out, **kw: calls.append((out, kw)) or Path(out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tiny.make_smol("x", image_size=32) == Path("x")
    assert calls == [("x", {"image_size": 32, "seed": 0})]
    assert any("make_llava_random" in str(w.message) for w in caught)
