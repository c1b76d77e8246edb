"""Video input pipelines: video folders, TFRecord frame shards, synthetic motion data."""
