"""Evaluation: views.py (the test views), topk.py (top-k error), metrics.py (the figures, as sums),
mistakes.py (WordNet mistake severity, per-class errors, confusions), scoring.py (`evaluate`: a model over an
evaluation loader), report.py (`imgnet test`), submission.py (the devkit's file), predict.py (`imgnet predict`).
The label sets beyond a split's own labels are trainer/labelsets/."""
