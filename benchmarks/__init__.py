"""The performance suite (`make bench`): ratios measured side by side in one process."""
