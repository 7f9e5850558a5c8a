"""Training and importing: the example models, your own data and your own trained models -> artifacts."""
