"""Figure helpers for the validation runs (shared with the callbacks' plots)."""

from hadainit.callbacks.plotting import label, new_figure, save

__all__ = ["label", "new_figure", "save"]
