"""Build the pydoc shards from Debian's `python3-doc` HTML (run from the repository root).

    apt-get install -y python3-doc        # 3.11.2-1 -> python3.11-doc 3.11.2-6+deb12u9
    .venv/bin/python data/pydoc/make_corpus.py [--html /usr/share/doc/python3.11/html]

One document per second-level section (`<section>` two deep in the page's `div.body`; the
text before a page's first such section is a document of its own), with code blocks kept
verbatim, in the page order of SECTIONS (files sorted by name). Only the standard library:
the output is byte-identical for the same package version.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

# The prose parts of the manual (not the ~28 MB library reference, the C API or What's New).
SECTIONS = ["tutorial", "howto", "reference", "faq", "using"]
SHARDS = 4
MIN_CHARS = 200  # shorter pieces (a page title) are prepended to the next document
BLOCKS = {
    "p", "pre", "div", "section", "li", "dt", "dd", "dl", "ul", "ol", "table", "tr",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "br", "figure", "caption",
}  # fmt: skip
SKIP_CLASSES = {"headerlink", "linenos"}


class PageText(HTMLParser):
    """The documents of one Sphinx page: (section id, text) per second-level section."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, opened a region we track)
        self.in_body = 0  # depth of open tags inside div.body (0: outside)
        self.section_depth = 0
        self.skip = 0  # depth inside a skipped element (headerlink anchors)
        self.pre = 0
        self.docs: list[tuple[str, list[str]]] = [("", [])]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = set((attr.get("class") or "").split())
        if tag in ("br", "img", "hr", "meta", "link", "input"):  # void elements
            if self.in_body and tag == "br":
                self._emit("\n")
            return
        if not self.in_body:
            if tag == "div" and "body" in classes:
                self.in_body = 1
                self.stack = [(tag, False)]
            return
        self.in_body += 1
        skipping = bool(self.skip) or bool(classes & SKIP_CLASSES)
        if skipping:
            self.skip += 1
        self.stack.append((tag, skipping))
        if tag == "section":
            self.section_depth += 1
            if self.section_depth == 2:
                self.docs.append((attr.get("id") or "", []))
        if tag == "pre":
            self.pre += 1
        if tag in BLOCKS:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if not self.in_body or tag in ("br", "img", "hr", "meta", "link", "input"):
            return
        # Pop to the matching open tag (Sphinx HTML is well formed; this tolerates stray ends).
        while self.stack:
            open_tag, skipping = self.stack.pop()
            self.in_body -= 1
            if skipping:
                self.skip -= 1
            if open_tag == "pre":
                self.pre -= 1
            if open_tag in BLOCKS:
                self._emit("\n")
            if open_tag == "section":
                if self.section_depth == 2:
                    self.docs.append(("", []))  # text after a section, before the next
                self.section_depth -= 1
            if open_tag == tag:
                break
        if self.in_body <= 0:
            self.in_body = 0
            self.stack = []

    def handle_data(self, data: str) -> None:
        if not self.in_body or self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        self._emit(data)

    def _emit(self, text: str) -> None:
        self.docs[-1][1].append(text)

    def documents(self) -> list[tuple[str, str]]:
        out = []
        for section, parts in self.docs:
            text = "".join(parts)
            lines = [line.rstrip() for line in text.split("\n")]
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
            if text:
                out.append((section, text))
        return out


def page_documents(path: Path, page: str) -> list[dict]:
    parser = PageText()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    docs, seen, carry = [], set(), ""
    for index, (section, text) in enumerate(parser.documents()):
        text = f"{carry}\n\n{text}" if carry else text
        if len(text) < MIN_CHARS:  # a lone heading: it opens the next document instead
            carry = text
            continue
        carry = ""
        key = f"{page}#{section}" if section else f"{page}#{index}"
        while key in seen:
            key += "'"
        seen.add(key)
        docs.append({"id": key, "text": text})
    if carry and docs:
        docs[-1]["text"] += f"\n\n{carry}"
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="/usr/share/doc/python3.11/html")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args()
    html = Path(args.html)
    docs: list[dict] = []
    for section in SECTIONS:
        for path in sorted((html / section).rglob("*.html")):
            page = path.relative_to(html).with_suffix("").as_posix()
            if page.endswith("/index"):
                continue  # tables of contents
            docs.extend(page_documents(path, page))
    per_shard = -(-len(docs) // SHARDS)
    for shard in range(SHARDS):
        target = Path(args.out) / f"pydoc-{shard:02d}.jsonl.gz"
        # mtime=0 and no file name in the header: the same bytes on every run.
        with open(target, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as handle:
            for doc in docs[shard * per_shard : (shard + 1) * per_shard]:
                handle.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    chars = sum(len(doc["text"]) for doc in docs)
    print(f"{len(docs)} documents, {chars:,} characters, {SHARDS} shards in {args.out}")


if __name__ == "__main__":
    main()
