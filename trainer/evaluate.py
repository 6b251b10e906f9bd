"""The evaluation names other code imports from here (docs/design.md, the README): the code lives in
trainer/eval/ (views, top-k, metrics, mistakes, scoring, the `imgnet test` report, submission, predict)."""

from trainer.amp import autocast
from trainer.data import TEN_CROP_FLIPS, TEN_CROP_OFFSETS, center_crop, ten_crop, view_geometry
from trainer.eval.metrics import METRICS, Scored, figures, label_set_figures, label_set_sums, metric_means
from trainer.eval.mistakes import TOP_CONFUSIONS, class_names, mistake_severity, summarize, upward_distances, wordnet_distance
from trainer.eval.predict import predict
from trainer.eval.report import (default_device, loader_workers, report_name, run_test, score_split, summary_line,
                                 view_report)
from trainer.eval.scoring import delivery_order, evaluate
from trainer.eval.submission import submission_ids, write_submission
from trainer.eval.topk import topk_wrong
from trainer.eval.views import VIEW_NAMES, VIEWS, average_views, center_view, eval_views, parse_views

from trainer.checkpoint import check_labels as check_checkpoint_labels  # noqa: E402 - the checks live with the schema

REAL_FIGURES = label_set_figures()  # the registered label lists' figures (ReaL's); for scripts that import it

__all__ = ["METRICS", "REAL_FIGURES", "TEN_CROP_FLIPS", "TEN_CROP_OFFSETS", "TOP_CONFUSIONS", "VIEWS", "VIEW_NAMES",
           "Scored", "autocast", "check_checkpoint_labels", "average_views", "center_crop", "center_view", "class_names", "default_device",
           "delivery_order", "eval_views", "evaluate", "figures", "label_set_figures", "label_set_sums",
           "loader_workers", "metric_means", "mistake_severity", "parse_views", "predict", "report_name", "run_test",
           "score_split", "submission_ids", "summarize", "summary_line", "ten_crop", "topk_wrong",
           "upward_distances", "view_geometry", "view_report", "wordnet_distance", "write_submission"]
