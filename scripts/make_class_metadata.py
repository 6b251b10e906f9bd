"""Regenerate imagenet_prep/data/ilsvrc2012_classes.json from the ILSVRC2012 devkit and WordNet.

    python scripts/make_class_metadata.py [--data ../shared/data] [--out imagenet_prep/data/ilsvrc2012_classes.json]

Inputs (see ../shared/data/README.md): devkit_t12/data/meta.mat (the synset table: ID, wnid, words, gloss,
children) and wordnet/wordnet.is_a.txt (image-net.org `parent child` edges). The hierarchy written is the
is_a DAG restricted to the 1000 classes and their ancestors; it must equal the DAG of meta.mat's children
lists edge for edge, and reach the root n00001740 'entity', or the script stops without writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imagenet_prep.labels import NUM_CLASSES, ROOT_WNID, SHIPPED_FILE, parse_meta_mat  # noqa: E402


def wordnet_parents(is_a: Path, leaves: list[str]) -> dict[str, list[str]]:
    """{wnid: sorted parents} for `leaves` and all their ancestors in the is_a edge list."""
    parents = defaultdict(set)
    for line in is_a.read_text(encoding="utf-8").splitlines():
        if line.strip():
            parent, child = line.split()
            parents[child].add(parent)
    out, stack = {}, list(leaves)
    while stack:
        w = stack.pop()
        if w not in out:
            out[w] = sorted(parents.get(w, ()))
            stack.extend(out[w])
    return dict(sorted(out.items()))


def one_entry_per_line(doc: dict) -> str:
    """JSON with one synset or hierarchy entry per line, so that a regenerated file diffs line by line."""
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    parts = []
    for key, value in doc.items():
        if isinstance(value, list):
            body = ",\n".join(dump(v) for v in value)
            parts.append(f"{dump(key)}: [\n{body}\n]")
        elif isinstance(value, dict):
            body = ",\n".join(f"{dump(k)}: {dump(v)}" for k, v in value.items())
            parts.append(f"{dump(key)}: {{\n{body}\n}}")
        else:
            parts.append(f"{dump(key)}: {dump(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the fixtures folder")
    ap.add_argument("--out", type=Path, default=REPO / "imagenet_prep" / "data" / SHIPPED_FILE)
    args = ap.parse_args(argv)

    meta = parse_meta_mat(args.data / "devkit_t12" / "data" / "meta.mat")
    hierarchy = wordnet_parents(args.data / "wordnet" / "wordnet.is_a.txt", [c["wnid"] for c in meta.classes])

    edges = lambda h: {(p, c) for c, ps in h.items() for p in ps}  # noqa: E731
    only_wn, only_mat = edges(hierarchy) - edges(meta.hierarchy), edges(meta.hierarchy) - edges(hierarchy)
    if only_wn or only_mat or hierarchy.keys() != meta.hierarchy.keys():
        sys.exit(f"WordNet is_a and meta.mat disagree: {len(only_wn)} edges only in is_a "
                 f"{sorted(only_wn)[:3]}, {len(only_mat)} only in meta.mat {sorted(only_mat)[:3]}")
    roots = [w for w, ps in hierarchy.items() if not ps]
    if roots != [ROOT_WNID]:
        sys.exit(f"expected the single root {ROOT_WNID}, found {roots}")
    assert len(meta.classes) == NUM_CLASSES

    doc = {
        "format_version": 1,
        "about": "ILSVRC2012 synsets (IDs 1-1000 are the classes) and their WordNet parents up to the root; "
                 "derived from the ImageNet devkit meta.mat and WordNet, see SOURCES.md",
        "synsets": list(meta.synsets),
        "hierarchy": hierarchy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = one_entry_per_line(doc)
    assert json.loads(text) == doc
    args.out.write_text(text, encoding="utf-8")
    multi = sum(len(ps) > 1 for ps in hierarchy.values())
    print(f"wrote {args.out} ({len(text.encode()) / 1e3:.0f} kB): {len(meta.synsets)} synsets, "
          f"{len(hierarchy)} nodes in the hierarchy ({multi} with two or more parents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
