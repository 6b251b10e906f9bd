"""The settings of a training run: `TrainConfig`, one dataclass whose fields are the `imgnet train` options.

Each field's metadata (trainer/settings.py) holds its option's help, allowed values and flag form, and two
facts about the run: `defines_run=False` for a setting that changes where or how fast a run goes, not
what it learns (`imgnet compare` leaves those out), and `resume_may_change=True` for one that a --resume may
set differently. The model switches (--towers, --lrn, ...) are not declared here: they are the fields of
the registered models' settings dataclasses (trainer/models/registry.py), added to TrainConfig below, so
`TrainConfig(lrn="none")` and `cfg.lrn` work and config.json keeps one flat record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, make_dataclass

from imagenet_prep.errors import ImgnetError
from trainer import settings
from trainer.models import registry
from trainer.schedule import parse_schedule
from trainer.settings import setting

RUNTIME = {"defines_run": False, "resume_may_change": True}  # where and how fast, never what is learned


@dataclass
class RunSettings:
    """TrainConfig's own fields (the model switches come from the registry). Units and paper sections in the
    help texts; every default is the paper's recipe (section 5)."""

    data: str = setting("", "Folder written by `imgnet prep` and `imgnet pca-stats` [with --resume: the run's].",
                        required=True, folder="existing",
                        **RUNTIME)
    out: str = setting("", "Run folder: config.json, log.jsonl, checkpoints/, curves.png.", required=True,
                       folder="any", **RUNTIME)
    # recipe, section 5
    epochs: int = setting(90, "Passes over the train split (section 5: about 90).", low=1, resume_may_change=True)
    batch_size: int = setting(128, "Images per SGD step, all processes together (section 5).", low=1)
    lr: float = setting(0.01, "Initial learning rate (section 5).", low=0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum (section 5).", low=0, high=1)
    weight_decay: float = setting(5e-4, "L2 weight decay (section 5).", low=0)
    bias_decay: bool = setting(True, "Decay the biases too (the paper's rule as written); --no-bias-decay: weights "
                               "only, as Caffe and cuda-convnet.", flag="--bias-decay/--no-bias-decay")
    lr_schedule: str = setting("plateau", "plateau: divide by 10 when val top-1 error stops improving; "
                               "step:30,60,80: after those epochs; cosine: from --lr at the first step to 0 after "
                               "the last, set before every step.")
    lr_factor: float = setting(0.1, "Multiply the lr by this at each drop (section 5: divide by 10).", low=0, high=1,
                               low_open=True, high_open=True)
    patience: int = setting(3, "plateau: epochs without a new best val top-1 error before dividing the lr.", low=1)
    max_lr_drops: int = setting(3, "plateau: divide at most this often (section 5: three times).", low=0)
    val_from_train: int = setting(0, "Hold out N train images per class to steer the schedule and pick best.pt, "
                                  "leaving the val split for the final number [default: use val].", low=0)
    # model, section 3 (the model's own switches follow `init`, from the registry)
    arch: str = setting(registry.DEFAULT, "alexnet (the paper's), alexnet-owt (torchvision's variant), cifar-quick "
                        "or cifar-18pct (cuda-convnet's CIFAR-10 nets, with their published recipes as defaults) "
                        "or module:callable, your factory called with num_classes.")
    init: str = setting("paper", "For a module:callable model: paper gives it section 5's init, module keeps its "
                        "own (the registered models always take their published init).", choices=("paper", "module"))
    # weights in (trainer/weights.py)
    init_from: str | None = setting(None, "Start from these weights: a state dict (what torch.save(model.state_dict()) "
                                    "writes, or one under 'state_dict' as timm saves it; torchvision's alexnet for "
                                    "--arch alexnet-owt) or a checkpoint of this project; "
                                    "a final layer of another class count is re-initialised. Epochs, lr schedule "
                                    "and optimizer start fresh; read once, not on --resume.", resume_may_change=True)
    # input, section 4.1
    mean: str = setting("image", "Subtract the mean image or the mean RGB.", choices=("image", "rgb"))
    crop: int | None = setting(None, "Side of the square crops the network sees; random crops are uniform over all "
                               "(size - crop + 1)^2 offsets (section 4.1) [default: 224 of 256-pixel DATA, else "
                               "7/8 of DATA's size].", low=1)
    flip: bool = setting(True, "Mirror each training crop with probability 0.5 (section 4.1); --no-flip: never.",
                         flag="--flip/--no-flip")
    lighting_std: float = setting(0.1, "Sigma of the PCA lighting alphas (section 4.1); 0 turns it off.", low=0)
    # knobs beside the paper's recipe: each off by default, so that the recipe above stays what runs. max_steps and
    # tensorboard say how long a run goes and where it logs, not what it learns (RUNTIME: a resume may change them,
    # imgnet compare leaves them out); limit_batches changes which images an epoch sees, so it defines the run
    warmup_epochs: float = setting(0.0, "Linear warmup over this many epochs (fractions allowed), set before every "
                                   "step: step s of the warmup's n steps runs at s/n of the schedule's lr (any "
                                   "schedule); 0: none.", low=0)
    label_smoothing: float = setting(0.0, "Label smoothing of the training loss (torch's CrossEntropyLoss "
                                     "label_smoothing); the logged train_loss is that loss, validation stays plain.",
                                     low=0, high=1, high_open=True)
    ema: float = setting(0.0, "Keep an exponential moving average of the weights with this decay (e.g. 0.9998), "
                         "updated after every step, validated each epoch beside the weights (log.jsonl val_ema_*) and "
                         "saved as checkpoints/ema/last.pt; 0: none.", low=0, high=1, high_open=True)
    limit_batches: int | None = setting(None, "Smoke runs: at most N batches in each train epoch and each "
                                        "validation (a setting of the run: a resume repeats it) [default: all].", low=1)
    max_steps: int | None = setting(None, "Smoke runs: stop the run after N optimizer steps in all, with a checkpoint "
                                    "that --resume continues exactly [default: no limit].", low=1, **RUNTIME)
    tensorboard: bool = setting(False, "Also write TensorBoard event files into the run folder, beside log.jsonl "
                                "(needs the tensorboard extra: pip install 'imgnet[tensorboard]').", **RUNTIME)
    # machinery
    workers: int | None = setting(None, "Loader processes [default: all cores but one].", low=0, **RUNTIME)
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...", **RUNTIME)
    amp: str = setting("off", "Mixed precision: bf16 autocast (CUDA, or a CPU with bf16 such as avx512_bf16: "
                       "bench/cpu_amp.py measured 1.0x for cifar-quick and 1.1x for AlexNet on a 2-core EPYC, "
                       "so fp32 stays the default), or fp16 autocast with loss scaling (CUDA only).",
                       choices=("off", "bf16", "fp16"), resume_may_change=True)
    channels_last: bool | None = setting(None, "NHWC memory format of the input and the weights (the same values) "
                                         "[default: on for CPU runs, where oneDNN's NHWC convolutions take cifar-quick's "
                                         "steps in about 0.6x the time on a 2-core EPYC; off on CUDA].",
                                         flag="--channels-last/--no-channels-last", **RUNTIME)
    compile: bool = setting(False, "torch.compile the model.", **RUNTIME)
    model_parallel: bool = setting(False, "One tower per GPU on cuda:0 and cuda:1, as in the paper.",
                                   defines_run=False)  # the same function as groups=2 (DESIGN.md); kept on resume
    seed: int = setting(0, "Weights, loader order, augmentation, dropout.")
    resume: bool = setting(False, "Continue the run in --out from checkpoints/last.pt with the settings in its "
                           "config.json, --data included; options given must match them (--epochs may grow).",
                           **RUNTIME)
    progress: bool = setting(True, "Progress bar and per-epoch lines on stderr.", option=False, **RUNTIME)


def _with_model_switches(base: type) -> type:
    """`base`'s fields with every registered model's switches inserted after `init`, as one dataclass."""
    own = [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in fields(base)]
    at = [name for name, *_ in own].index("init") + 1
    models = [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in registry.switch_fields()]
    return make_dataclass("TrainConfig", own[:at] + models + own[at:], namespace={"__module__": __name__, "__doc__": (
        "The settings of a run: RunSettings' fields plus the model switches of trainer/models/registry.py.")})


TrainConfig = _with_model_switches(RunSettings)
# settings that may differ between a run and its --resume; the others must be the ones it was started with
RUNTIME_FIELDS = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("resume_may_change"))
# settings that change where or how fast a run goes, not what it learns (`imgnet compare` leaves them out)
NOT_DEFINING = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("defines_run") is False)


def config_for(**given) -> TrainConfig:
    """A TrainConfig of the settings `given`, the others from the model's recipe (ModelSpec.recipe) and then
    the paper's defaults: what `imgnet train` runs for the options the user passed."""
    arch = given.get("arch", registry.DEFAULT)
    names = {f.name for f in fields(TrainConfig)}
    recipe = registry.recipe(arch)
    unknown = sorted(set(recipe) - names)
    assert not unknown, f"the recipe of {arch} sets {unknown}, which are no TrainConfig fields"
    return TrainConfig(**{**recipe, **given})


def check_config(cfg) -> None:
    """ImgnetError for a setting no run can use (device-dependent checks come later)."""
    if not cfg.data or not cfg.out:
        raise ImgnetError("TrainConfig needs data (the DATA folder) and out (the RUN folder)")
    registry.settings_of(cfg.arch, {**vars(cfg), "num_classes": 1000})  # the arch and the model's own checks
    settings.check(cfg, {f.name for f in fields(RunSettings) if f.metadata["choices"]})
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "patience": cfg.patience}
    for name, v in positive.items():
        if not v > 0:
            raise ImgnetError(f"{name}={v}; expected a positive number")
    if cfg.crop is not None and (isinstance(cfg.crop, bool) or not isinstance(cfg.crop, int) or cfg.crop < 1):
        raise ImgnetError(f"crop={cfg.crop!r}; expected a positive crop side in pixels, or None for the default")
    for name in ("lighting_std", "val_from_train", "weight_decay", "max_lr_drops"):
        if getattr(cfg, name) < 0:
            raise ImgnetError(f"{name}={getattr(cfg, name)}; expected a number >= 0")
    if not 0 < cfg.lr_factor < 1:
        raise ImgnetError(f"lr_factor={cfg.lr_factor}; expected a factor in (0, 1) such as 0.1")
    if cfg.init_from and not cfg.resume and not os.path.isfile(cfg.init_from):
        raise ImgnetError(f"--init-from {cfg.init_from} not found; expected a state dict or checkpoint file")
    if cfg.model_parallel:
        registry.check_model_parallel(cfg.arch)
    parse_schedule(cfg.lr_schedule)
    check_knobs(cfg)


def check_knobs(cfg) -> None:
    """ImgnetError for a knob beside the paper's recipe set to what no run can use; --tensorboard where the
    tensorboard package is missing (the run refuses to start rather than not logging)."""
    for name in ("limit_batches", "max_steps"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ImgnetError(f"{name}={v!r}; expected a whole number >= 1, or None for no limit")
    settings.check(cfg, {"warmup_epochs", "label_smoothing", "ema"})
    if cfg.tensorboard:
        from trainer.tensorboard import check_available

        check_available()
