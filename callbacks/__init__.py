"""Lightning callbacks (installed as ``hadainit.callbacks``)."""
