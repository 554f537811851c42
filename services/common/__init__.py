"""What every detection server shares: serving, health, config, logs, metrics, validation."""
