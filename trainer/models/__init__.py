"""The models `--arch` names: registry.py (which ones, and module:callable), one module per model."""
