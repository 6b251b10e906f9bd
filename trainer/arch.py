"""Which network a run trains: the names of trainer/models/registry.py, kept importable here."""

from trainer.models.registry import (DEFAULT, MODELS, build, check_arch, checkpoint_arch, settings_of, spec_of,
                                     switch_fields)

BUILTIN = MODELS  # the registered models by name

__all__ = ["BUILTIN", "DEFAULT", "MODELS", "build", "check_arch", "checkpoint_arch", "settings_of", "spec_of",
           "switch_fields"]
