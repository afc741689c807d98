"""Optional parts, each opt-in: auth, metrics, logs, health, reflection, CORS."""
