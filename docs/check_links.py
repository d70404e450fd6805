"""Checks that every relative link in README.md and docs/*.md resolves, its #anchor included (GitHub's heading
slugs). Run from anywhere: `python docs/check_links.py`; exit status 1 names each dead link."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def anchors(path: Path) -> set[str]:
    return {slug(match.group(1)) for _, line in prose_lines(path) if (match := re.match(r"#+\s+(.*)", line))}


def dead_links(root: Path) -> list[str]:
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for number, line in prose_lines(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                destination = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(root)}:{number}"
                if not destination.exists():
                    found.append(f"{where}: {target} does not exist")
                elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                    found.append(f"{where}: {destination.relative_to(root)} has no heading #{anchor}")
    return found


if __name__ == "__main__":
    dead = dead_links(ROOT)
    print("\n".join(dead) or "every relative link resolves")
    sys.exit(1 if dead else 0)
