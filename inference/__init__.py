"""Using a model: checkpoints, loading a run, translating, sacreBLEU, attention pictures."""
