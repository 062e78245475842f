"""Everything a user deletes when they bring their own data and models: the embedded datasets and demo training."""
