"""Every documentation page that the code, the recipes and the docs refer to is in the repository.

References checked, in the text files of src/, benchmarks/, scripts/, tests/, docs/ and README.md:

- a path ``docs/NAME.md``: the page must exist under the repository's docs/;
- a relative path that starts with ``../`` and ends in ``.md``: it must resolve to an existing file
  inside the repository (from the citing file's folder, or from the repository root);
- a bare page name followed by a section, or one of ``BARE_PAGE_NAMES``: it must be a page of
  docs/, a file at the repository root or beside the citing file.

A reference followed by a section in quotes, the citation form used across the code
(``docs/method.md, "Embedding extraction"``; also ``docs/NAME.md "Section"`` and
``docs/NAME.md ("Section")``), must name a heading of that page: the heading's text without its
backticks, or without a trailing parenthesis such as ``(measured)``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "benchmarks", "scripts", "tests", "docs", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".json"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}

# Page names that comments cite without a folder; each must be a page of docs/ when cited.
BARE_PAGE_NAMES = {"method", "protocols", "foundation", "offline", "style", "landscape"}

PATH_REF = re.compile(r"(?<![\w./-])(docs/[\w.-]+\.md|(?:\.\./)+[\w./-]+\.md)")
BARE_REF = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
# What may follow a reference to make it a section citation: an optional closing backtick, then a
# comma and/or space and/or an opening parenthesis, then the section in double or single quotes.
SECTION = re.compile(r"`?(?:,\s*\(?|\s+\(?|\()([\"'])((?:(?!\1).){1,160})\1")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def scanned_files(root: Path = ROOT) -> list[Path]:
    """The text files to scan; this file is left out (its examples name missing pages on purpose)."""
    files = []
    for name in SCANNED:
        path = root / name
        if path.is_file():
            files.append(path)
            continue
        for file in sorted(path.rglob("*")):
            parts = set(file.relative_to(root).parts)
            if (file.is_file() and file.suffix in SUFFIXES and not parts & SKIPPED_DIRS
                    and not any(part.endswith(".egg-info") for part in parts)
                    and file.resolve() != Path(__file__).resolve()):
                files.append(file)
    return files


def headings(page: Path) -> set[str]:
    """The heading texts of a Markdown page (outside code fences), backticks removed."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.add(match.group(1).replace("`", "").strip())
    return found


def section_exists(section: str, page_headings: set[str]) -> bool:
    section = section.replace("`", "").strip()
    return any(section in (heading, re.sub(r"\s*\([^()]*\)$", "", heading)) for heading in page_headings)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return path.is_file()


def resolve(reference: str, citing: Path, root: Path = ROOT) -> Path | None:
    """The repository file a reference names, or None when there is none inside the repository."""
    if reference.startswith("docs/"):
        candidates = [root / reference]
    elif "/" in reference:
        candidates = [citing.parent / reference, root / reference]
    else:
        candidates = [root / "docs" / reference, root / reference, citing.parent / reference]
    return next((candidate.resolve() for candidate in candidates if _inside(candidate, root)), None)


def references(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, reference, cited section or None) for every documentation reference in a text."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        spans = []
        for match in PATH_REF.finditer(line):
            spans.append((match.start(), match.end(), match.group(1)))
        for match in BARE_REF.finditer(line):
            if any(start <= match.start() < end for start, end, _ in spans):
                continue
            section = SECTION.match(line, match.end())
            if section or match.group(1)[: -len(".md")] in BARE_PAGE_NAMES:
                spans.append((match.start(), match.end(), match.group(1)))
        for _, end, reference in sorted(spans):
            section = SECTION.match(line, end)
            found.append((number, reference, section.group(2) if section else None))
    return found


def problems(root: Path = ROOT) -> list[str]:
    """One message per reference that does not resolve, naming the file and line."""
    messages, cache = [], {}
    for file in scanned_files(root):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        where = file.relative_to(root)
        for number, reference, section in references(text):
            target = resolve(reference, file, root)
            if target is None:
                messages.append(f"{where}:{number}: {reference} is not a file of the repository")
                continue
            if section is None or target.suffix != ".md":
                continue
            if target not in cache:
                cache[target] = headings(target)
            if not section_exists(section, cache[target]):
                messages.append(f"{where}:{number}: {reference} has no section {section!r}")
    return messages


def test_every_documentation_reference_resolves_inside_the_repository():
    found = problems()
    assert not found, "broken documentation references:\n" + "\n".join(found)


def test_the_checker_reports_missing_pages_sections_and_paths_outside_the_repository(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Setup (measured)\n\n```\n# not a heading\n```\n")
    (tmp_path / "src").mkdir()
    page = "docs/" + "guide.md"
    lines = [
        f"# fine: {page}, \"Setup\" and ({page}, \"Setup (measured)\") and guide.md, 'Guide'",
        f"# missing page: docs/{'absent'}.md",
        f"# missing section: {page}, \"Install\"",
        f"# a fenced line is no heading: {page} (\"not a heading\")",
        "# outside the repository: ../shared/" + "guide.md",
        "# a bare page name: " + "method" + ".md",
        "# an output file, not a page: report" + ".md",
    ]
    (tmp_path / "src" / "module.py").write_text("\n".join(lines) + "\n")
    found = problems(tmp_path)
    assert found == [
        "src/module.py:2: docs/absent.md is not a file of the repository",
        "src/module.py:3: docs/guide.md has no section 'Install'",
        "src/module.py:4: docs/guide.md has no section 'not a heading'",
        "src/module.py:5: ../shared/guide.md is not a file of the repository",
        "src/module.py:6: method.md is not a file of the repository",
    ]
