"""LightningModules, optimisers and schedules for the two training stages."""
