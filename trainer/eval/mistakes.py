"""How wrong the mistakes are: WordNet mistake severity (the README's "mistake severity"), per-class top-1
error and the most frequent confusions, for the `imgnet test` report."""

from __future__ import annotations

from collections import deque

import numpy as np

TOP_CONFUSIONS = 20


def upward_distances(wnid: str, hierarchy: dict) -> dict[str, int]:
    """{ancestor: length of the shortest upward path from `wnid`}, `wnid` itself at 0 (breadth first,
    so a node reached along two parents keeps the shorter path)."""
    dist = {wnid: 0}
    queue = deque([wnid])
    while queue:
        w = queue.popleft()
        for p in hierarchy.get(w, ()):
            if p not in dist:
                dist[p] = dist[w] + 1
                queue.append(p)
    return dist


def wordnet_distance(a: str, b: str, hierarchy: dict, _up: dict | None = None) -> int | None:
    """min over common ancestors c of max(d(a, c), d(b, c)), d the shortest upward path; WordNet is a DAG
    (some classes have two parents), so every common ancestor is a candidate. None when a and b share
    no ancestor in `hierarchy` (e.g. ImageFolder classes that are not wnids)."""
    up = _up if _up is not None else {}
    for w in (a, b):
        if w not in up:
            up[w] = upward_distances(w, hierarchy)
    da, db = up[a], up[b]
    common = da.keys() & db.keys()
    return min(max(da[c], db[c]) for c in common) if common else None


def mistake_severity(y_true: np.ndarray, y_pred: np.ndarray, wnids: list[str], hierarchy: dict) -> dict:
    """Mean WordNet distance (`wordnet_distance`) between true and predicted class over the top-1 mistakes.

    Returns {"mistake_severity": mean or None, "severity_n": mistakes with a defined distance,
    "distances": {(t, p): distance}} for the distinct mistaken pairs."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    wrong = y_true != y_pred
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], axis=1), axis=0, return_counts=True)
    up: dict = {}
    distances, total, n = {}, 0, 0
    for (t, p), k in zip(pairs.tolist(), counts.tolist()):
        d = wordnet_distance(wnids[t], wnids[p], hierarchy, up) if hierarchy else None
        distances[(t, p)] = d
        if d is not None:
            total += d * k
            n += k
    return {"mistake_severity": total / n if n else None, "severity_n": n, "distances": distances}



def class_names(labels: dict) -> tuple[list[str], list[str]]:
    """(wnids, words) of a labels.json dict, in label order (words fall back to the wnid)."""
    return [c["wnid"] for c in labels["classes"]], [c.get("words") or c["wnid"] for c in labels["classes"]]


def summarize(y: np.ndarray, top5: np.ndarray, labels: dict) -> dict:
    """per_class top-1 error, the most frequent confusions (with WordNet distances) and mistake severity."""
    wnids, words = class_names(labels)
    c = len(wnids)
    pred = top5[:, 0]
    n_per = np.bincount(y, minlength=c)
    wrong_per = np.bincount(y[pred != y], minlength=c)
    per_class = [{"index": i, "wnid": wnids[i], "words": words[i], "n": int(n_per[i]),
                  "top1_err": float(wrong_per[i] / n_per[i]) if n_per[i] else None} for i in range(c)]
    sev = mistake_severity(y, pred, wnids, labels.get("hierarchy") or {})
    wrong = pred != y
    pairs, counts = np.unique(np.stack([y[wrong], pred[wrong]], axis=1), axis=0, return_counts=True)
    order = sorted(range(len(counts)), key=lambda j: (-counts[j], *pairs[j]))[:TOP_CONFUSIONS]
    confusions = [{"true": int(t), "true_wnid": wnids[t], "true_words": words[t],
                   "pred": int(p), "pred_wnid": wnids[p], "pred_words": words[p], "count": int(counts[j]),
                   "wordnet_distance": sev["distances"].get((int(t), int(p)))}
                  for j in order for t, p in [pairs[j].tolist()]]
    return {"mistake_severity": sev["mistake_severity"], "severity_n": sev["severity_n"],
            "per_class": per_class, "confusions": confusions}

