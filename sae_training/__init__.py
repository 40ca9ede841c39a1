"""sae_training package."""
