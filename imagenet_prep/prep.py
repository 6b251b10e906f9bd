"""`imgnet prep` as a library: `run_prep(PrepConfig(src=..., out=...))`. The code lives in imagenet_prep/pack/
(run.py: run_prep; worker.py: decode, resize, encode; inorder.py and streamed.py: the packers); the names
here stay importable for scripts written against them."""

from imagenet_prep.pack.commits import COMMIT_EVERY, in_order
from imagenet_prep.pack.run import ALL_SPLITS, REPORT, PrepConfig, pillow_build, run_prep
from imagenet_prep.pack.worker import process_bytes, process_item

__all__ = ["ALL_SPLITS", "COMMIT_EVERY", "REPORT", "PrepConfig", "in_order", "pillow_build", "process_bytes",
           "process_item", "run_prep"]
