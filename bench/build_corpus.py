"""Build a real English benchmark corpus (10M+ whitespace tokens) from Debian packages.

Writes one paragraph (dictionary entry, verse, fortune, documentation paragraph, synset
gloss) per line, plain text with markup stripped, in a fixed pseudo-random order (seeded)
so that any prefix is a fair sample of the whole; and a 1M-token prefix file beside it
for scaling measurements. The Debian packages it reads are installed with apt-get when
missing (root needed then). Neither the corpus nor the packages belong in the repo.

Sources (Debian package: text, licence):

- wordnet-base: WordNet 3.0 synsets, lemmas + gloss + examples (via wordnet_text.py);
  WordNet 3.0 licence (Princeton University, permissive, attribution).
- dict-gcide: GCIDE, the Collaborative International Dictionary of English 0.48
  (Webster's 1913 + WordNet 1.5 + additions), its dictd data .dict.dz read as gzip,
  pronunciation/etymology/source markup stripped; GPL-2+.
- dict-foldoc: Free On-line Dictionary of Computing (Denis Howe); GFDL 1.1+.
- dict-devil: Ambrose Bierce, The Devil's Dictionary (1911); public domain.
- jargon-text: The Jargon File 4.4.7 (plain text); public domain.
- bible-kjv-text (+ bible-kjv for its `bible` reader): King James Version, one verse
  per line; text public domain (package scripts GPL-2+).
- fortunes, fortunes-min: fortune-mod's English cookie files (ascii-art left out);
  BSD-4-clause / various (see /usr/share/doc/fortunes/copyright).
- fortune-anarchism: BLAG fortune assortment; public domain.
- python3.11-doc: the Python 3.11 documentation's reStructuredText sources
  (html/_sources/*.rst.txt), prose only: literal/code blocks dropped; PSF License v2.
- perl-doc: Perl 5.36 core POD manuals (/usr/share/perl/5.36.0/pod), prose only:
  verbatim (code) paragraphs dropped; GPL-1+ or Artistic.

Usage: python bench/build_corpus.py [OUT] [--prefix-tokens 1000000] [--seed 0]
       [--shape paragraphs|sentences]
(`--shape sentences` gives the second benchmark shape, the same sources cut into short
glosses, definitions and sentences, one per line:
`python bench/build_corpus.py /work/bench-data/short-10m.txt --shape sentences
 --prefix-out /work/bench-data/short-1m.txt --min-tokens 9500000`: 9.9M tokens,
 971k lines of 10.2 tokens on average, against 19.2 for the default shape)
(default OUT /work/bench-data/corpus-10m.txt; the prefix goes to corpus-1m.txt beside it).
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wordnet_text import iter_synset_lines  # noqa: E402

DEFAULT_OUT = Path("/work/bench-data/corpus-10m.txt")
MIN_TOKENS = 10_000_000
MIN_LINE_TOKENS = 3  # drop headword-only and table-of-contents lines

_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    """Blank-line separated blocks of raw lines (trailing newlines removed)."""
    block: list[str] = []
    for line in lines:
        line = line.rstrip("\n").rstrip()
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


# ---------------------------------------------------------------- dictd dictionaries

_GCIDE_PRON = re.compile(r"\\[^\\]*\\")  # \Ab*do"men\
_GCIDE_ENTITY = re.compile(r"(?<=[A-Za-z])\[([^\]\s]{1,5})\]|\[([^\]\s]{1,5})\](?=[A-Za-z])")
_BRACKETS = re.compile(r"\[[^\]]*\]")  # etymology, [1913 Webster], [Obs.]
_BRACES = re.compile(r"[{}]")
_ANGLE = re.compile(r"<[^>]*>")  # FOLDOC <programming>, e-mail addresses
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)")


def _gcide_entity(m: re.Match) -> str:
    code = m.group(1) or m.group(2)
    if code.lower() in ("ae", "oe"):
        return code
    letters = [c for c in code if c.isalpha()]
    return letters[0] if letters else ""


def dictd_entries(path: Path) -> Iterator[str]:
    """Paragraphs of a dictd .dict.dz (dictzip is gzip), skipping the 00-database headers."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        skipping = False
        for block in paragraphs(f):
            head = block[0].strip()
            if head.startswith("00-database") or head.startswith("00database"):
                skipping = True
                continue
            if skipping and not block[0].startswith(" ") and len(block) > 1:
                skipping = False  # the first real entry: headword line then body
            if skipping:
                continue
            yield " ".join(line.strip() for line in block)


def gcide_lines(path: Path = Path("/usr/share/dictd/gcide.dict.dz")) -> Iterator[str]:
    for entry in dictd_entries(path):
        text = _GCIDE_PRON.sub(" ", entry)
        text = _GCIDE_ENTITY.sub(_gcide_entity, text)
        text = _BRACKETS.sub(" ", text)
        text = _BRACES.sub("", text)
        text = _URL.sub(" ", text)
        yield text


def foldoc_lines(path: Path = Path("/usr/share/dictd/foldoc.dict.dz")) -> Iterator[str]:
    for entry in dictd_entries(path):
        text = _URL.sub(" ", entry)
        text = _ANGLE.sub(" ", text)
        text = _BRACES.sub("", text)
        text = _DATE.sub(" ", text)
        yield text


def devil_lines(path: Path = Path("/usr/share/dictd/devil.dict.dz")) -> Iterator[str]:
    for entry in dictd_entries(path):
        yield _BRACES.sub("", _URL.sub(" ", entry))


# ---------------------------------------------------------------- plain texts


def jargon_lines(path: Path = Path("/usr/share/doc/jargon-text/jargon.txt.gz")) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for block in paragraphs(f):
            yield _URL.sub(" ", " ".join(line.strip() for line in block))


def bible_lines() -> Iterator[str]:
    """One verse per line, through the `bible` reader (the data file is compressed)."""
    out = subprocess.run(
        ["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    verse = re.compile(r"^\s*\d+\s+(.*\S)")
    for line in out.splitlines():
        m = verse.match(line)
        if m:
            yield m.group(1)


FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {"ascii-art"}  # pictures, not text


def fortune_lines(
    packages: tuple[str, ...] = ("fortunes-min", "fortunes", "fortune-anarchism"),
) -> Iterator[str]:
    files: list[Path] = []
    for pkg in packages:
        listed = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout
        for name in listed.splitlines():
            p = Path(name)
            if (
                p.parent == FORTUNE_DIR
                and p.suffix not in (".dat", ".u8")
                and p.name not in FORTUNE_SKIP
                and p.is_file()
                and not p.is_symlink()
                and p not in files
            ):
                files.append(p)
    for p in sorted(files):
        text = p.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"(?m)^%\s*$", text):
            yield cookie.replace("\n", " ")


# ---------------------------------------------------------------- documentation

PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
_RST_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]*?)(?:\s*<[^>]*>)?`_{1,2}")
_RST_MARK = re.compile(r"``|\*\*|\*|`|\|")
_RST_RULE = re.compile(r"^\s*([=\-~^\"'#*+`.:_])\1{2,}\s*$")
_RST_TABLE = re.compile(r"^\s*[+|]([-=+]|\s)")
_LITERAL_DIRECTIVES = re.compile(
    r"^\s*\.\. (code-block|code|doctest|testcode|testoutput|testsetup|testcleanup|sourcecode|"
    r"productionlist|literalinclude|highlight|raw|toctree|csv-table|list-table|only|"
    r"availability|index|moduleauthor|sectionauthor|_|\|)"
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_lines(root: Path = PYDOC_SOURCES) -> Iterator[str]:
    """Prose paragraphs of reST sources; literal blocks and code directives dropped."""
    for path in sorted(root.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        literal_indent: int | None = None  # skip blocks indented deeper than this
        for block in paragraphs(text.splitlines()):
            first = block[0]
            ind = _indent(first)
            if literal_indent is not None:
                if ind > literal_indent:
                    continue
                literal_indent = None
            stripped = first.lstrip()
            if _LITERAL_DIRECTIVES.match(first) or stripped.startswith((">>>", "...")):
                literal_indent = ind
                continue
            kept = []
            for line in block:
                s = line.strip()
                if _RST_RULE.match(line) or _RST_TABLE.match(line):
                    continue
                if s.startswith(".. "):  # other directives: drop the line, keep the body
                    continue
                if s.startswith(":") and re.match(r"^:[\w -]+:", s) and not kept:
                    s = re.sub(r"^:[\w -]+:", "", s)  # field lists
                kept.append(s)
            para = " ".join(kept)
            if para.endswith("::"):
                literal_indent = ind
                para = para[:-1]
            para = _RST_ROLE.sub(r"\1", para)
            para = _RST_LINK.sub(r"\1", para)
            para = _RST_MARK.sub("", para)
            para = _URL.sub(" ", para)
            if para.strip():
                yield para


PERL_POD = Path("/usr/share/perl/5.36.0/pod")
_POD_CODE = re.compile(r"[A-Z]<(?:<+\s)?([^<>]*?)(?:\s>+)?>")
_POD_DROP = ("=over", "=back", "=cut", "=pod", "=begin", "=end", "=for", "=encoding")


def pod_lines(root: Path = PERL_POD) -> Iterator[str]:
    """Prose paragraphs of POD files: headings and items kept, verbatim (code) dropped."""
    for path in sorted(root.glob("*.pod")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in paragraphs(text.splitlines()):
            first = block[0]
            if first[:1].isspace():
                continue  # verbatim paragraph
            if first.startswith(_POD_DROP):
                continue
            para = " ".join(line.strip() for line in block)
            para = re.sub(r"^=(head\d|item)\s*", "", para)
            for _ in range(3):  # nested formatting codes
                para = _POD_CODE.sub(lambda m: m.group(1).split("|")[0], para)
            yield _URL.sub(" ", para)


# ---------------------------------------------------------------- assembly

# name -> (Debian packages, line generator)
SOURCES: dict[str, tuple[tuple[str, ...], Callable[[], Iterable[str]]]] = {
    "wordnet": (("wordnet-base",), iter_synset_lines),
    "gcide": (("dict-gcide",), gcide_lines),
    "foldoc": (("dict-foldoc",), foldoc_lines),
    "devil": (("dict-devil",), devil_lines),
    "jargon": (("jargon-text",), jargon_lines),
    "bible-kjv": (("bible-kjv-text", "bible-kjv"), bible_lines),
    "fortunes": (("fortunes-min", "fortunes", "fortune-anarchism"), fortune_lines),
    "python-docs": (("python3.11-doc",), rst_lines),
    "perl-pod": (("perl-doc",), pod_lines),
}


def installed(package: str) -> bool:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return r.returncode == 0 and "install ok installed" in r.stdout


def ensure_packages(packages: Iterable[str]) -> None:
    """apt-get install the missing packages (running apt-get update first if that fails)."""
    missing = sorted({p for p in packages if not installed(p)})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"missing Debian packages {missing} and no apt-get to install them")
    print(f"installing {' '.join(missing)}", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(cmd).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(cmd, check=True)


# Where `--shape sentences` cuts a paragraph: after . ; ? ! followed by a space.
_SENTENCE_END = re.compile(r"(?<=[.;?!])\s+")


def shaped(text: str, shape: str) -> list[str]:
    """One paragraph as lines: itself, or (`sentences`) its sentences and clauses."""
    return [text] if shape == "paragraphs" else _SENTENCE_END.split(text)


def collect(
    names: Iterable[str], shape: str = "paragraphs"
) -> tuple[list[str], dict[str, dict[str, int]]]:
    lines: list[str] = []
    stats: dict[str, dict[str, int]] = {}
    for name in names:
        started = time.perf_counter()
        n_lines = n_tokens = 0
        for line in (p for raw in SOURCES[name][1]() for p in shaped(_clean(raw), shape)):
            n = line.count(" ") + 1 if line else 0
            if n < MIN_LINE_TOKENS or not any(c.isalpha() for c in line):
                continue
            lines.append(line)
            n_lines += 1
            n_tokens += n
        stats[name] = {"lines": n_lines, "tokens": n_tokens}
        print(
            f"  {name:12s} {n_tokens:>11,d} tokens {n_lines:>9,d} lines "
            f"({time.perf_counter() - started:.1f}s)",
            flush=True,
        )
    return lines, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT)
    parser.add_argument("--prefix-out", type=Path, help="default: corpus-1m.txt beside OUT")
    parser.add_argument("--prefix-tokens", type=int, default=1_000_000)
    parser.add_argument("--min-tokens", type=int, default=MIN_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="*", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument(
        "--shape",
        choices=("paragraphs", "sentences"),
        default="paragraphs",
        help="one paragraph per line, or one sentence (short glosses and definitions) per line",
    )
    args = parser.parse_args()
    prefix_out = args.prefix_out or args.out.with_name("corpus-1m.txt")

    ensure_packages(p for name in args.sources for p in SOURCES[name][0])
    print("reading sources (whitespace tokens, lines):")
    lines, _ = collect(args.sources, args.shape)
    random.Random(args.seed).shuffle(lines)  # any prefix is a fair sample of every source

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokens = 0
    prefix_tokens = prefix_lines = None
    with (
        open(args.out, "w", encoding="utf-8") as out,
        open(prefix_out, "w", encoding="utf-8") as pre,
    ):
        for i, line in enumerate(lines):
            out.write(line + "\n")
            if prefix_tokens is None:
                pre.write(line + "\n")
            tokens += line.count(" ") + 1
            if prefix_tokens is None and tokens >= args.prefix_tokens:
                prefix_tokens, prefix_lines = tokens, i + 1
    print(f"{args.out}: {tokens:,d} tokens (whitespace), {len(lines):,d} lines")
    print(f"{prefix_out}: {prefix_tokens:,d} tokens (whitespace), {prefix_lines:,d} lines")
    if tokens < args.min_tokens:
        sys.exit(f"corpus has {tokens:,d} tokens, fewer than --min-tokens {args.min_tokens:,d}")


if __name__ == "__main__":
    main()
